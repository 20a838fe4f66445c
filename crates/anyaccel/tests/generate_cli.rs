//! `anyaccel generate` as a user runs it: files written, metadata recorded,
//! bad input refused with a message naming the flag.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn anyaccel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_anyaccel"))
        .args(args)
        .current_dir(repo())
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anyaccel-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn writes_pngs_with_a1111_parameters() {
    let out = tmp("txt2img");
    let o = anyaccel(&[
        "generate",
        "--model",
        "fixtures/models/tiny-sd15",
        "--prompt",
        "a red fox",
        "--negative-prompt",
        "blurry",
        "--steps",
        "3",
        "--seed",
        "40",
        "-n",
        "2",
        "--size",
        "64x96",
        "--scheduler",
        "dpmpp_2m",
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stdout);
    let files: Vec<&str> = printed.lines().collect();
    assert_eq!(files.len(), 2);
    let second = std::fs::read(files[1]).unwrap();
    let img = anyaccel_pipeline::images::decode(&second, 1 << 20).unwrap();
    assert_eq!(img.dimensions(), (64, 96));
    let params = anyaccel_pipeline::images::png_parameters(&second).expect("parameters chunk");
    assert!(
        params.starts_with("a red fox\nNegative prompt: blurry\n"),
        "{params}"
    );
    for field in [
        "Steps: 3",
        "Sampler: DPM++ 2M",
        "Seed: 41",
        "Size: 64x96",
        "Model hash: ",
        "CFG scale: 7.5",
    ] {
        assert!(params.contains(field), "missing {field:?} in {params}");
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn img2img_keeps_the_init_image_size() {
    let out = tmp("img2img");
    let o = anyaccel(&[
        "generate",
        "--model",
        "fixtures/models/tiny-sd15",
        "--prompt",
        "a red fox",
        "--init-image",
        "fixtures/reference/init_64.png",
        "--strength",
        "0.5",
        "--steps",
        "4",
        "--seed",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        anyaccel_pipeline::images::decode(&bytes, 1 << 20)
            .unwrap()
            .dimensions(),
        (64, 64)
    );
    assert!(
        anyaccel_pipeline::images::png_parameters(&bytes)
            .unwrap()
            .contains("Denoising strength: 0.5")
    );
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bad_input_names_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--size", "65x64"], "--width: must be a multiple of 8"),
        (&["--steps", "0"], "--steps: must be between 1 and"),
        (&["--scheduler", "heun"], "unknown scheduler `heun`"),
        (
            &["--guidance", "99"],
            "--guidance-scale: must be between 0 and",
        ),
        (&["--strength", "0.5"], "--strength needs --init-image"),
        (&["--device", "cuda"], "--device cuda was requested but"),
        (
            &["--cuda-graphs", "4", "--io-binding", "false"],
            "--cuda-graphs needs --io-binding true",
        ),
        (
            &["--cuda-graphs", "4", "--device", "cpu"],
            "CUDA graphs need the CUDA execution provider, and this executor runs on cpu",
        ),
        (
            &["--sidecar-compile", "reduce-overhead"],
            "--sidecar-dtype and --sidecar-compile need --executor remote",
        ),
        (
            &["--sidecar-compile", "fast", "--executor", "remote"],
            "unknown torch.compile mode `fast`; expected off, default, reduce-overhead or max-autotune",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "generate",
            "--model",
            "fixtures/models/tiny-sd15",
            "--prompt",
            "x",
            "--out",
            "/tmp/unused",
        ];
        args.extend_from_slice(extra);
        let o = anyaccel(&args);
        assert!(!o.status.success(), "{extra:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(expected),
            "{extra:?}: expected {expected:?} in {err}"
        );
    }
}

#[test]
fn missing_model_files_are_named() {
    let dir = tmp("broken");
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo().join("fixtures/models/tiny-sd15");
    // Copy everything but the UNet.
    for entry in [
        "model_index.json",
        "scheduler",
        "tokenizer",
        "text_encoder",
        "vae_decoder",
    ] {
        let status = Command::new("cp")
            .arg("-r")
            .arg(src.join(entry))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let o = anyaccel(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        "/tmp/unused",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("unet/model.onnx") && err.contains("missing"),
        "{err}"
    );
    // A truncated ONNX file is reported as such, with its path.
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    std::fs::write(dir.join("unet/model.onnx"), b"\x08\x07garbage").unwrap();
    let o = anyaccel(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        "/tmp/unused",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("unet/model.onnx") && err.contains("not a loadable ONNX model"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
