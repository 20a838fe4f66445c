//! The whole pipeline on ONNX Runtime (CPU) against diffusers' PyTorch
//! pipelines on the same tiny random-weight models, with the same seeds.
//!
//! Tolerance: on 0–255 pixels, at most `MAX_ABS` on any channel and a mean
//! absolute difference of at most `MEAN_ABS`. The remaining differences come
//! from ONNX Runtime's kernels versus PyTorch's (fp32 rounding), amplified by
//! a few denoising steps of a random-weight UNet.

mod common;

use std::sync::Arc;

use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_pipeline::{Defaults, GenerationParams, Limits, Model, Pipeline};
use common::{cases, diff, fixtures};

const MAX_ABS: u8 = 2;
const MEAN_ABS: f64 = 0.02;

fn pipeline(model: &str, spacing: Option<&str>) -> Pipeline {
    let dir = fixtures().join("models").join(model);
    let mut m = Model::load_dir(model, &dir).expect("tiny model loads");
    if let Some(s) = spacing {
        m.info.scheduler_config.timestep_spacing = Some(s.to_string());
    }
    let config = OnnxConfig {
        device: DeviceRequest::Cpu,
        ..OnnxConfig::default()
    };
    let exec = OnnxExecutor::load(&dir, &m.components(), &config).expect("onnx executor loads");
    Pipeline::new(Arc::new(exec), m, Limits::default(), Defaults::default())
}

#[test]
fn images_match_diffusers() {
    common::assert_matches_references(
        &common::MODELS,
        |model, case| pipeline(model, common::spacing(case)),
        MAX_ABS,
        MEAN_ABS,
    );
}

#[test]
fn initial_latents_are_diffusers_noise() {
    // The pipeline's first draw per image is torch's randn for that seed.
    for (_, case) in cases().iter().filter(|(_, c)| c["mode"] == "txt2img") {
        let seeds = case["seeds"].as_array().unwrap();
        let rows = common::rows(&case["initial_latents"]);
        for (seed, row) in seeds.iter().zip(rows) {
            let ours = anyaccel_pipeline::noise::NoiseGenerator::new(seed.as_u64().unwrap())
                .randn(row.len());
            for (a, b) in ours.iter().zip(&row) {
                assert!((*a as f64 - b).abs() < 1e-5, "seed {seed}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn a_seed_gives_the_same_image_alone_and_inside_a_batch() {
    for model in ["tiny-sd15", "tiny-sdxl"] {
        seed_alone_and_in_batch(model);
    }
}

fn seed_alone_and_in_batch(model: &str) {
    let p = pipeline(model, None);
    let base = GenerationParams {
        prompt: "a photograph of an astronaut riding a horse".into(),
        width: Some(64),
        height: Some(64),
        steps: Some(4),
        scheduler: Some("euler_a".into()),
        ..GenerationParams::default()
    };
    let batch = p
        .validate(GenerationParams {
            seed: Some(1),
            n: Some(3),
            ..base.clone()
        })
        .unwrap();
    let solo = p
        .validate(GenerationParams {
            seed: Some(2),
            n: Some(1),
            ..base
        })
        .unwrap();
    let batch_images = p.generate(&batch).unwrap();
    let solo_images = p.generate(&solo).unwrap();
    assert_eq!(batch_images[1].seed, 2);
    let (max, mean) = diff(&batch_images[1].image, &solo_images[0].image);
    println!("{model}: batch vs solo, seed 2: max {max}, mean {mean:.4}");
    assert!(
        max <= 1 && mean < 0.05,
        "batch vs solo differ: max {max}, mean {mean}"
    );
    // Different seeds in the batch really are different images.
    let (max01, _) = diff(&batch_images[0].image, &batch_images[1].image);
    assert!(max01 > 10);
}

/// Both SDXL tokenizers give transformers' ids (`tokenizer_2` pads with `!`).
#[test]
fn sdxl_tokenizers_match_transformers() {
    use anyaccel_executor::Component;
    let m = Model::load_dir("tiny-sdxl", &fixtures().join("models/tiny-sdxl")).unwrap();
    let mut checked = 0;
    for (model, case) in cases() {
        if model != "tiny-sdxl" {
            continue;
        }
        let prompts = [
            (case["prompt"].as_str(), "text_input_ids"),
            (case["negative_prompt"].as_str(), "uncond_input_ids"),
        ];
        for (prompt, key) in prompts {
            let Some(prompt) = prompt else { continue };
            for (encoder, suffix) in [
                (Component::TextEncoder, ""),
                (Component::TextEncoder2, "_2"),
            ] {
                let want: Vec<i64> = case[format!("{key}{suffix}")]
                    .as_array()
                    .unwrap_or_else(|| panic!("{key}{suffix} in {}", case["case"]))
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let tokenizer = m.tokenizer(encoder).unwrap();
                let got = tokenizer.encode(prompt, tokenizer.max_len()).unwrap().ids;
                assert_eq!(got, want, "{} {encoder} {prompt:?}", case["case"]);
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "checked {checked}");
}
