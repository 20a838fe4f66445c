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

use anyaccel_pipeline::CompileTarget;
use common::*;
use compile::CompileArgs;
use serde_json::Value;

fn args(out: &std::path::Path) -> CompileArgs {
    args_for(out, CompileTarget::OnnxFp32)
}

fn args_for(out: &std::path::Path, target: CompileTarget) -> CompileArgs {
    CompileArgs {
        model: tiny_diffusers().display().to_string(),
        revision: None,
        target,
        out: out.to_path_buf(),
        batch_size: None,
        size: None,
        push: None,
        force: false,
        no_validate: false,
        no_optimize: false,
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
    // The CPU fusions ran, rewrote every self-attention, and kept the UNet's output.
    let fusion = &manifest["passes"]["cpu_fusion"];
    assert!(
        fusion["fused"]["self-attention rewritten to MultiHeadAttention"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{fusion}"
    );
    assert!(
        fusion["check"]["relative_rms_error"]
            .as_f64()
            .is_some_and(|e| e < 1e-4),
        "{fusion}"
    );
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
    assert!(
        !identical,
        "the UNet should be the fused graph, not optimum's export"
    );

    // A second compile into the same folder needs --force.
    let err = compile::run(args(&out))
        .expect_err("non-empty --out is refused")
        .to_string();
    assert!(err.contains("--force"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn onnx_int8_artifact_is_served_and_stays_close_to_fp32() {
    let out =
        std::env::temp_dir().join(format!("anyaccel-compile-int8-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    compile::run(args_for(&out, CompileTarget::OnnxInt8)).expect("compile succeeds");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("anyaccel-manifest.json")).expect("manifest written"),
    )
    .expect("manifest is JSON");
    assert_eq!(manifest["target"], "onnx-int8");
    assert_eq!(manifest["dtype"], "int8");
    let check = &manifest["passes"]["int8"]["check"];
    println!("int8 UNet vs fp32 on one step: {check}");
    let rel = check["relative_rms_error"].as_f64().expect("int8 check");
    assert!(rel > 0.0, "quantization changed nothing: {check}");
    assert!(rel < 0.05, "int8 UNet is too far from fp32: {check}");

    // Served by the same executor; the image moves a little from the fp32 one.
    let int8 = onnx_pipeline_for(&out);
    let fp32 = onnx_pipeline_for(&tiny_onnx());
    let p = params(
        "a photograph of an astronaut riding a horse",
        42,
        1,
        10,
        "euler",
    );
    let a = int8
        .generate(&int8.validate(p.clone()).expect("valid"))
        .expect("the int8 artifact generates");
    let b = fp32
        .generate(&fp32.validate(p).expect("valid"))
        .expect("fp32 generates");
    let (max, mean) = diff(&a[0].image, &b[0].image);
    println!("int8 vs fp32 image, 10 steps: max {max} mean {mean:.3} (of 255)");
    assert!(mean > 0.0, "int8 gave the fp32 image exactly");
    assert!(mean < 2.0, "int8 image is far from fp32: mean {mean}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn onnx_openvino_artifact_keeps_the_graph_as_exported() {
    let out = std::env::temp_dir().join(format!(
        "anyaccel-compile-openvino-test-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    compile::run(args_for(&out, CompileTarget::OnnxOpenVino)).expect("compile succeeds");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("anyaccel-manifest.json")).expect("manifest written"),
    )
    .expect("manifest is JSON");
    assert_eq!(manifest["target"], "onnx-openvino");
    assert_eq!(manifest["dtype"], "fp32");
    // Only the timestep input changes: no fusion or quantization pass ran.
    let passes = manifest["passes"].as_object().expect("passes");
    assert_eq!(
        passes.keys().collect::<Vec<_>>(),
        ["per_sample_timesteps"],
        "{passes:?}"
    );
    assert_eq!(passes["per_sample_timesteps"]["applied"], true);
    // OpenVINO cannot load ONNX Runtime's contrib operators, so none may appear.
    let unet = std::fs::read(out.join("unet/model.onnx")).expect("unet exported");
    assert!(
        !unet.windows(13).any(|w| w == b"com.microsoft"),
        "the UNet uses ONNX Runtime's contrib operators"
    );

    // The plain export draws the fixture's image (here on ONNX Runtime's CPU
    // kernels; crates/pipeline/tests/openvino.rs runs OpenVINO itself).
    let artifact = onnx_pipeline_for(&out);
    let fixture = onnx_pipeline_for(&tiny_onnx());
    let p = params("a lighthouse at dusk", 7, 1, 6, "euler");
    let a = artifact
        .generate(&artifact.validate(p.clone()).expect("valid"))
        .expect("the artifact generates");
    let b = fixture
        .generate(&fixture.validate(p).expect("valid"))
        .expect("the fixture generates");
    let (max, mean) = diff(&a[0].image, &b[0].image);
    assert!(max <= 1, "artifact vs fixture: max {max}, mean {mean:.3}");
    let _ = std::fs::remove_dir_all(&out);
}

/// SDXL through `anyaccel compile --target onnx-fp32`: the family is recorded,
/// the UNet is fused and takes per-row timesteps, and the artifact draws the
/// committed fixture's images (the same weights through the same exporter).
#[test]
fn sdxl_onnx_fp32_artifact_takes_per_row_timesteps_and_matches_the_fixture() {
    use anyaccel_executor::{Executor, TimestepInput};
    let out = std::env::temp_dir().join(format!("anyaccel-compile-sdxl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut a = args(&out);
    a.model = tiny_sdxl_diffusers().display().to_string();
    compile::run(a).expect("compile succeeds");
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("anyaccel-manifest.json")).expect("manifest written"),
    )
    .expect("manifest is JSON");
    assert_eq!(manifest["family"], "sdxl");
    assert_eq!(manifest["pipeline_class"], "StableDiffusionXLPipeline");
    let passes = &manifest["passes"];
    assert_eq!(passes["per_sample_timesteps"]["applied"], true, "{passes}");
    assert!(
        passes["per_sample_timesteps"]["check"]["max_abs_error"]
            .as_f64()
            .is_some_and(|e| e < 1e-3),
        "{passes}"
    );
    assert!(
        passes["cpu_fusion"]["check"]["relative_rms_error"]
            .as_f64()
            .is_some_and(|e| e < 1e-4),
        "{passes}"
    );
    for f in ["text_encoder_2/model.onnx", "tokenizer_2/vocab.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(
        onnx_executor(&out).capabilities().timestep,
        TimestepInput::PerSample
    );
    assert_eq!(
        onnx_executor(&tiny_sdxl_onnx()).capabilities().timestep,
        TimestepInput::Scalar,
        "optimum's own export keeps the scalar timestep"
    );
    let served = onnx_pipeline_for(&out);
    let fixture = onnx_pipeline_for(&tiny_sdxl_onnx());
    let mut p = params(
        "a photograph of an astronaut riding a horse",
        42,
        2,
        4,
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
            "compiled SDXL vs fixture, seed {}: max {max} mean {mean:.4}",
            x.seed
        );
        assert!(
            max <= 1,
            "the compiled SDXL artifact draws a different image"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
