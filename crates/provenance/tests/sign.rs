//! Signing adds a manifest that the c2pa crate's own Reader reads back, and
//! leaves the rest of the image alone.

mod common;

use anyaccel_provenance::{
    C2paArgs, GENERATION_ASSERTION, ImageFormat, Signer, TRAINED_ALGORITHMIC_MEDIA,
};
use serde_json::Value;

fn dev_signer(include_prompt: bool) -> Signer {
    Signer::from_args(&C2paArgs {
        c2pa_include_prompt: include_prompt,
        ..C2paArgs::default()
    })
    .unwrap()
    .unwrap()
}

fn manifest_json(reader: &c2pa::Reader) -> Value {
    let all: Value = serde_json::from_str(&reader.json()).unwrap();
    let label = all["active_manifest"]
        .as_str()
        .unwrap_or_else(|| panic!("no active manifest: {all:#}"));
    all["manifests"][label].clone()
}

fn assertion<'a>(manifest: &'a Value, label: &str) -> &'a Value {
    manifest["assertions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["label"] == label)
        .map(|a| &a["data"])
        .unwrap_or_else(|| panic!("no {label} assertion in {manifest:#}"))
}

/// Failure codes other than trust: the development CA is in no trust list, so
/// `signingCredential.untrusted` is expected; anything else is a real failure.
fn integrity_failures(reader: &c2pa::Reader) -> Vec<String> {
    reader
        .validation_status()
        .unwrap_or_default()
        .iter()
        .map(|s| s.code().to_string())
        .filter(|c| c != "signingCredential.untrusted")
        .collect()
}

#[test]
fn every_format_gets_a_manifest_the_c2pa_reader_validates() {
    let signer = dev_signer(false);
    for format in ImageFormat::ALL {
        let original = common::image(format, 64);
        let signed = signer.sign(&original, format, &common::facts()).unwrap();
        assert!(signed.len() > original.len(), "{format}: nothing embedded");

        let reader = common::read(&signed, format);
        assert_eq!(
            integrity_failures(&reader),
            Vec::<String>::new(),
            "{format}: {}",
            reader.json()
        );
        assert_eq!(
            reader.validation_state(),
            c2pa::ValidationState::Valid,
            "{format}: valid (signature and hashes) but not trusted"
        );
        let codes: Vec<String> = reader
            .validation_status()
            .unwrap_or_default()
            .iter()
            .map(|s| s.code().to_string())
            .collect();
        assert_eq!(codes, ["signingCredential.untrusted"], "{format}");

        let manifest = manifest_json(&reader);
        let actions = assertion(&manifest, "c2pa.actions.v2")["actions"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(actions.len(), 1, "{format}");
        assert_eq!(actions[0]["action"], "c2pa.created");
        assert_eq!(actions[0]["digitalSourceType"], TRAINED_ALGORITHMIC_MEDIA);
        assert_eq!(actions[0]["softwareAgent"]["name"], "anyaccel");
        assert_eq!(actions[0]["softwareAgent"]["version"], "0.1.0-test");
        assert_eq!(manifest["claim_generator_info"][0]["name"], "anyaccel");
        assert_eq!(manifest["claim_version"], 2);
        assert_eq!(manifest["signature_info"]["alg"], "Es256");

        let generation = assertion(&manifest, GENERATION_ASSERTION);
        assert_eq!(generation["model_id"], "fixtures/models/tiny-sd15");
        assert_eq!(generation["model_hash"], "sha256:0123456789abcdef");
        assert_eq!(generation["development_certificate"], true);
        assert_eq!(generation["prompt_included"], false);
        for private in ["prompt", "negative_prompt", "seed"] {
            assert!(
                generation.get(private).is_none(),
                "{format}: {private} leaked"
            );
        }
        let text = String::from_utf8_lossy(&signed);
        assert!(
            !text.contains("blurry"),
            "{format}: negative prompt in the file"
        );
    }
}

#[test]
fn prompt_and_seed_only_with_include_prompt() {
    let signer = dev_signer(true);
    assert!(signer.includes_prompt());
    let signed = signer
        .sign(&common::jpeg(64), ImageFormat::Jpeg, &common::facts())
        .unwrap();
    let manifest = manifest_json(&common::read(&signed, ImageFormat::Jpeg));
    let generation = assertion(&manifest, GENERATION_ASSERTION);
    assert_eq!(generation["prompt_included"], true);
    assert_eq!(generation["prompt"], "a lighthouse at dusk");
    assert_eq!(generation["negative_prompt"], "blurry");
    assert_eq!(generation["seed"], 42);
}

#[test]
fn png_parameters_chunk_and_pixels_survive_signing() {
    let signer = dev_signer(false);
    let original = common::png(64);
    assert_eq!(
        common::png_parameters(&original).as_deref(),
        Some(common::PARAMETERS)
    );
    let signed = signer
        .sign(&original, ImageFormat::Png, &common::facts())
        .unwrap();
    assert_eq!(
        common::png_parameters(&signed).as_deref(),
        Some(common::PARAMETERS),
        "the A1111 parameters chunk must survive"
    );
    for format in ImageFormat::ALL {
        let original = common::image(format, 64);
        let signed = signer.sign(&original, format, &common::facts()).unwrap();
        let a = image::load_from_memory(&original).unwrap().to_rgb8();
        let b = image::load_from_memory(&signed)
            .unwrap_or_else(|e| panic!("{format}: signed file no longer decodes: {e}"))
            .to_rgb8();
        assert!(a == b, "{format}: pixels changed");
    }
}

#[test]
fn tampered_pixels_fail_validation() {
    let signer = dev_signer(false);
    for format in ImageFormat::ALL {
        let signed = signer
            .sign(&common::image(format, 64), format, &common::facts())
            .unwrap();
        let tampered = common::tamper(&signed, format);
        let reader = common::read(&tampered, format);
        assert_eq!(
            reader.validation_state(),
            c2pa::ValidationState::Invalid,
            "{format}: {}",
            reader.json()
        );
        let failures = integrity_failures(&reader);
        assert!(
            failures.iter().any(|c| c == "assertion.dataHash.mismatch"),
            "{format}: {failures:?}"
        );
    }
}

#[test]
fn not_an_image_is_a_sign_error() {
    let signer = dev_signer(false);
    let err = signer
        .sign(b"definitely not a png", ImageFormat::Png, &common::facts())
        .unwrap_err();
    assert!(
        matches!(
            err,
            anyaccel_provenance::ProvenanceError::Sign {
                format: ImageFormat::Png,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn one_signer_signs_from_many_threads() {
    let signer = std::sync::Arc::new(dev_signer(false));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let signer = signer.clone();
            std::thread::spawn(move || {
                let format = ImageFormat::ALL[i % 3];
                let signed = signer
                    .sign(&common::image(format, 32), format, &common::facts())
                    .unwrap();
                let reader = common::read(&signed, format);
                assert_eq!(reader.validation_state(), c2pa::ValidationState::Valid);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
