//! `anyaccel compile --target onnx-fp32` of the tiny diffusers model produces
//! an artifact the ONNX executor serves.
//!
//! Runs the CLI's own code (crates/anyaccel/src/compile.rs, included here until
//! the binary wires the subcommand) with `--python <repo>/.venv/bin/python`, so
//! the export is the embedded python/anyaccel_sidecar/compile.py under the
//! repo's pinned exporter packages.

mod common;

#[path = "../../anyaccel/src/compile.rs"]
#[allow(dead_code)]
mod compile;

use common::*;
use compile::{CompileArgs, Target};
use serde_json::Value;

fn args(out: &std::path::Path) -> CompileArgs {
    CompileArgs {
        model: tiny_diffusers().display().to_string(),
        revision: None,
        target: Target::OnnxFp32,
        out: out.to_path_buf(),
        batch_size: None,
        size: None,
        push: None,
        force: false,
        no_validate: false,
        python: Some(venv_python()),
        venv: None,
        base_python: "python3".into(),
    }
}

#[test]
fn onnx_fp32_artifact_is_served_by_the_onnx_executor() {
    let out = std::env::temp_dir().join(format!("anyaccel-compile-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    compile::run(args(&out)).expect("compile succeeds");

    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("anyaccel-manifest.json")).expect("manifest written"),
    )
    .expect("manifest is JSON");
    println!(
        "{}",
        serde_json::to_string_pretty(&manifest["source"]).unwrap_or_default()
    );
    assert_eq!(manifest["target"], "onnx-fp32");
    assert_eq!(manifest["accelerator"], "cpu");
    assert_eq!(manifest["dtype"], "fp32");
    assert_eq!(manifest["shapes"]["kind"], "dynamic");
    assert_eq!(
        manifest["source"]["id"],
        tiny_diffusers().display().to_string()
    );
    assert_eq!(
        manifest["source"]["sha256"].as_str().map(str::len),
        Some(64)
    );
    let files: Vec<&str> = manifest["artifact"]["files"]
        .as_array()
        .expect("file list")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    for f in [
        "unet/model.onnx",
        "text_encoder/model.onnx",
        "vae_decoder/model.onnx",
        "tokenizer/vocab.json",
    ] {
        assert!(files.contains(&f), "{f} in {files:?}");
    }

    // The ONNX executor serves it, and it is the committed fixture's model:
    // same image as the fixture (same weights through the same exporter).
    let served = onnx_pipeline_for(&out);
    let fixture = onnx_pipeline_for(&tiny_onnx());
    let mut p = params(
        "a photograph of an astronaut riding a horse",
        42,
        2,
        5,
        "euler",
    );
    p.negative_prompt = Some("blurry, low quality".into());
    let a = served
        .generate(&served.validate(p.clone()).expect("valid"))
        .expect("the artifact generates");
    let b = fixture
        .generate(&fixture.validate(p).expect("valid"))
        .expect("fixture generates");
    for (x, y) in a.iter().zip(&b) {
        let (max, mean) = diff(&x.image, &y.image);
        println!(
            "compiled artifact vs committed fixture, seed {}: max {max} mean {mean:.4}",
            x.seed
        );
        assert!(
            max <= 1,
            "the compiled artifact generates a different image"
        );
    }
    let identical = ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
        .iter()
        .all(|c| {
            std::fs::read(out.join(c).join("model.onnx")).ok()
                == std::fs::read(tiny_onnx().join(c).join("model.onnx")).ok()
        });
    println!("ONNX files byte-identical to fixtures/models/tiny-sd15: {identical}");

    // A second compile into the same folder needs --force.
    let err = compile::run(args(&out))
        .expect_err("non-empty --out is refused")
        .to_string();
    assert!(err.contains("--force"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}
