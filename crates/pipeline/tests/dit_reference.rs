//! SD 3.5 and FLUX.1 (dev, schnell) on ONNX Runtime (CPU) against diffusers'
//! PyTorch pipelines on the same tiny random-weight transformers, with the
//! same seeds; their T5 tokenizer against transformers'; the flow-match
//! schedules against diffusers' `FlowMatchEulerDiscreteScheduler`.
//!
//! Same tolerance as the UNet families (`diffusers_reference.rs`).

mod common;

use std::sync::Arc;

use anyaccel_executor::Component;
use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_pipeline::scheduler::{FlowSigmas, Schedule, SchedulerConfig, SchedulerKind};
use anyaccel_pipeline::tokenizer::PromptTokenizer;
use anyaccel_pipeline::{Defaults, GenerationParams, Guidance, Limits, Model, Pipeline};
use common::{DIT_MODELS, cases_of, diff, fixtures, floats, read_json};
use serde_json::Value;

const MAX_ABS: u8 = 2;
const MEAN_ABS: f64 = 0.02;

fn pipeline(model: &str, max_sequence_length: Option<usize>) -> Pipeline {
    let dir = fixtures().join("models").join(model);
    let m = Model::load_dir(model, &dir).expect("tiny model loads");
    let config = OnnxConfig {
        device: DeviceRequest::Cpu,
        ..OnnxConfig::default()
    };
    let exec = OnnxExecutor::load(&dir, &m.components(), &config).expect("onnx executor loads");
    let defaults = Defaults {
        max_sequence_length,
        ..Defaults::for_model(&m.info)
    };
    Pipeline::new(Arc::new(exec), m, Limits::default(), defaults)
}

fn case_t5_len(case: &Value) -> Option<usize> {
    case["max_sequence_length"].as_u64().map(|n| n as usize)
}

#[test]
fn images_match_diffusers() {
    common::assert_matches_references(
        &DIT_MODELS,
        |model, case| pipeline(model, case_t5_len(case)),
        MAX_ABS,
        MEAN_ABS,
    );
}

#[test]
fn families_and_guidance_are_read_from_the_folders() {
    let p = pipeline("tiny-sd3", None);
    assert_eq!(p.guidance(), Guidance::Classifier);
    assert_eq!(p.t5_len(), Some(256));
    let p = pipeline("tiny-flux", None);
    assert_eq!(p.guidance(), Guidance::Distilled);
    assert_eq!(p.t5_len(), Some(512));
    let p = pipeline("tiny-flux-schnell", Some(64));
    assert_eq!(p.guidance(), Guidance::None);
    assert_eq!(p.t5_len(), Some(64));
}

#[test]
fn initial_latents_are_diffusers_noise() {
    let mut checked = 0;
    for (_, case) in cases_of(&DIT_MODELS)
        .iter()
        .filter(|(_, c)| c["mode"] == "txt2img")
    {
        let seeds = case["seeds"].as_array().unwrap();
        let rows = common::rows(&case["initial_latents"]);
        for (seed, row) in seeds.iter().zip(rows) {
            // 16 latent channels, unpacked (Flux packs after drawing).
            assert_eq!(
                row.len() as u64,
                16 * case["width"].as_u64().unwrap() / 8 * case["height"].as_u64().unwrap() / 8
            );
            let ours = anyaccel_pipeline::noise::NoiseGenerator::new(seed.as_u64().unwrap())
                .randn(row.len());
            for (a, b) in ours.iter().zip(&row) {
                assert!((*a as f64 - b).abs() < 1e-5, "seed {seed}: {a} vs {b}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "checked {checked}");
}

/// Our timesteps per step equal the ones diffusers called the transformer
/// with, for every case (txt2img and img2img, static and dynamic shift).
#[test]
fn case_timesteps_match_diffusers() {
    for (model, case) in cases_of(&DIT_MODELS) {
        let m = Model::load_dir(&model, &fixtures().join("models").join(&model)).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let (w, h) = (
            case["width"].as_u64().unwrap() as usize,
            case["height"].as_u64().unwrap() as usize,
        );
        let (spread, tokens) = if m.info.family == anyaccel_pipeline::ModelFamily::Flux {
            (FlowSigmas::Linear, (w / 16) * (h / 16))
        } else {
            (FlowSigmas::Uniform, 0)
        };
        let s = Schedule::flow_match(&m.info.scheduler_config, steps, spread, tokens).unwrap();
        let start = case
            .get("strength")
            .and_then(Value::as_f64)
            .map_or(0, |st| s.start_index(st as f32));
        let ours: Vec<f64> = s.timesteps()[start..].iter().map(|&t| t as f64).collect();
        let want = floats(&case["timesteps"]);
        assert_eq!(ours.len(), want.len(), "{model} {}", case["case"]);
        for (a, b) in ours.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-3,
                "{model} {}: {ours:?} vs {want:?}",
                case["case"]
            );
        }
    }
}

#[test]
fn a_seed_gives_the_same_image_alone_and_inside_a_batch() {
    for (model, guidance) in [("tiny-sd3", 5.0), ("tiny-flux", 3.5)] {
        let p = pipeline(model, Some(32));
        let base = GenerationParams {
            prompt: "a photograph of an astronaut riding a horse".into(),
            width: Some(64),
            height: Some(64),
            steps: Some(3),
            guidance_scale: Some(guidance),
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
        assert!(max <= 1 && mean < 0.05, "{model}: max {max}, mean {mean}");
        let (max01, _) = diff(&batch_images[0].image, &batch_images[1].image);
        assert!(max01 > 4, "{model}: seeds 1 and 2 gave the same image");
    }
}

/// FLUX.1-dev's guidance is an input of the transformer: another scale is
/// another image, from one pass. Schnell has no such input, so its scale
/// changes nothing.
#[test]
fn distilled_guidance_steers_dev_and_schnell_ignores_it() {
    let run = |p: &Pipeline, g: f32| {
        let r = p
            .validate(GenerationParams {
                prompt: "a red fox".into(),
                width: Some(64),
                height: Some(64),
                steps: Some(2),
                guidance_scale: Some(g),
                seed: Some(4),
                ..GenerationParams::default()
            })
            .unwrap();
        p.generate(&r).unwrap().remove(0).image
    };
    let dev = pipeline("tiny-flux", Some(16));
    let (max, _) = diff(&run(&dev, 1.0), &run(&dev, 9.0));
    assert!(max > 0, "FLUX.1-dev ignored guidance_scale");
    let schnell = pipeline("tiny-flux-schnell", Some(16));
    let (max, _) = diff(&run(&schnell, 0.0), &run(&schnell, 9.0));
    assert_eq!(max, 0, "schnell's image changed with guidance_scale");
}

/// What transformers' tokenizers give for every case's prompt: both CLIPs
/// and T5 at the case's length.
#[test]
fn case_tokens_match_transformers() {
    let mut checked = 0;
    for (model, case) in cases_of(&DIT_MODELS) {
        let m = Model::load_dir(&model, &fixtures().join("models").join(&model)).unwrap();
        let t5 = m.info.family.t5_encoder().unwrap();
        let t5_len = case_t5_len(&case).unwrap();
        let mut keys = vec![(Component::TextEncoder, "input_ids", 77)];
        if m.info.family == anyaccel_pipeline::ModelFamily::StableDiffusion3 {
            keys.push((Component::TextEncoder2, "input_ids_2", 77));
        }
        keys.push((t5, "t5_input_ids", t5_len));
        let mut prompts = vec![("text_", case["prompt"].as_str().unwrap())];
        if case["do_classifier_free_guidance"] == true {
            prompts.push(("uncond_", case["negative_prompt"].as_str().unwrap_or("")));
        }
        for (prefix, text) in prompts {
            for (encoder, key, len) in &keys {
                let key = if prefix == "text_" && *key == "t5_input_ids" {
                    key.to_string()
                } else {
                    format!("{prefix}{key}")
                };
                let want: Vec<i64> = case[&key]
                    .as_array()
                    .unwrap_or_else(|| panic!("{key} in {}", case["case"]))
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let got = m.tokenizer(*encoder).unwrap().encode(text, *len).unwrap();
                assert_eq!(got.ids, want, "{model} {} {key}", case["case"]);
                checked += 1;
            }
        }
    }
    assert!(checked >= 40, "checked {checked}");
}

/// The T5 tokenizer (SentencePiece unigram via `tokenizers`) against
/// transformers' T5TokenizerFast on punctuation, unicode, numbers, unknown
/// characters and over-long prompts, at several lengths.
#[test]
fn t5_tokenizer_matches_transformers() {
    let r = read_json("reference/t5_tokenizer.json");
    let tok = PromptTokenizer::from_dir(&fixtures().join("t5")).unwrap();
    assert!(tok.is_t5());
    assert_eq!(tok.max_len(), 512);
    let mut failures = Vec::new();
    let cases = r["cases"].as_array().unwrap();
    let mut truncated = 0;
    for c in cases {
        let prompt = c["prompt"].as_str().unwrap();
        let len = c["max_length"].as_u64().unwrap() as usize;
        let want: Vec<i64> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = tok.encode(prompt, len).unwrap();
        if got.ids != want {
            failures.push(format!(
                "{prompt:?} @ {len}:\n  ours {:?}\n  want {want:?}",
                got.ids
            ));
        }
        let untruncated = c["untruncated_len"].as_u64().unwrap() as usize;
        assert_eq!(got.truncated, untruncated > len, "{prompt:?} @ {len}");
        truncated += usize::from(got.truncated);
    }
    assert!(cases.len() >= 100 && truncated >= 3);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The family's lengths are bounded by the tokenizer's.
    assert!(tok.encode("x", 513).is_err());
    assert!(tok.encode("x", 1).is_err());
}

/// Timesteps and sigmas of every flow-match config, step count, spread and
/// image size against diffusers.
#[test]
fn flow_match_schedules_match_diffusers() {
    let r = read_json("reference/flow_match.json");
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, c) in r["configs"].as_object().unwrap() {
        let mut json = c["config"].clone();
        json["_class_name"] = "FlowMatchEulerDiscreteScheduler".into();
        let cfg: SchedulerConfig = serde_json::from_value(json).unwrap();
        assert_eq!(
            SchedulerKind::from_class_name("FlowMatchEulerDiscreteScheduler", &cfg),
            Some(SchedulerKind::FlowMatchEuler)
        );
        for row in c["rows"].as_array().unwrap() {
            let steps = row["steps"].as_u64().unwrap() as usize;
            let spread = match row["spread"].as_str().unwrap() {
                "linear" => FlowSigmas::Linear,
                _ => FlowSigmas::Uniform,
            };
            let tokens = row["image_tokens"].as_u64().unwrap_or(0) as usize;
            let what = format!("{name} {} {steps} steps {tokens} tokens", row["spread"]);
            if let Some(mu) = row["mu"].as_f64() {
                let ours = anyaccel_pipeline::scheduler::dynamic_shift(&cfg.flow, tokens);
                assert!((ours - mu).abs() < 1e-9, "{what}: mu {ours} vs {mu}");
            }
            let s = Schedule::flow_match(&cfg, steps, spread, tokens).unwrap();
            for (key, ours, tol) in [
                ("timesteps", s.timesteps(), 1e-3),
                ("sigmas", s.sigmas(), 1e-6),
            ] {
                let want = floats(&row[key]);
                if ours.len() != want.len()
                    || ours
                        .iter()
                        .zip(&want)
                        .any(|(a, b)| (*a as f64 - b).abs() > tol)
                {
                    failures.push(format!("{what}: {key} {ours:?} vs {want:?}"));
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "checked {checked}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// With a budget that holds the weights and one 64×64 image, a request for
/// eight is a validation error on `n` that says why, and one image passes.
#[test]
fn a_request_past_the_memory_budget_is_refused() {
    use anyaccel_pipeline::memory::{MemoryBudget, weights_bytes};
    let p = pipeline("tiny-flux", Some(16));
    let m = Model::load_dir("tiny-flux", &fixtures().join("models/tiny-flux")).unwrap();
    let comps = m.components();
    let probe =
        MemoryBudget::preflight(&m.info, &comps, &[(64, 64)], 1, (u64::MAX / 2, "test")).unwrap();
    let fits_one =
        weights_bytes(&m.info.root, &comps) + probe.activations(&m.info, 64, 64, 2, true);
    let budget =
        MemoryBudget::preflight(&m.info, &comps, &[(64, 64)], 1, (fits_one, "test")).unwrap();
    let p = p.with_memory(Some(budget));
    let params = |n| GenerationParams {
        prompt: "a red fox".into(),
        width: Some(64),
        height: Some(64),
        n: Some(n),
        ..GenerationParams::default()
    };
    assert!(p.validate(params(1)).is_ok());
    let e = p.validate(params(8)).unwrap_err();
    assert_eq!(e.field, "n");
    assert!(
        e.message.contains("does not fit in memory"),
        "{}",
        e.message
    );
}
