//! Shared helpers for tests that read the committed fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

use anyaccel_pipeline::{GenerationParams, MicroParams, Pipeline, images};
use image::RgbImage;
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn read_json(rel: &str) -> Value {
    let path = fixtures().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `timestep_spacing` a reference case overrode, if any.
pub fn spacing(case: &Value) -> Option<&str> {
    case["scheduler_overrides"]
        .get("timestep_spacing")
        .and_then(Value::as_str)
}

/// A JSON list of numbers, which the fixture script sometimes stores as a string.
pub fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::String(s) => floats(&serde_json::from_str::<Value>(s).expect("list in string")),
        Value::Array(a) => a
            .iter()
            .flat_map(|x| match x {
                Value::Array(_) | Value::String(_) => floats(x),
                _ => vec![x.as_f64().expect("number")],
            })
            .collect(),
        other => panic!("expected a list of numbers, got {other}"),
    }
}

/// Rows of a nested list (one list per image).
pub fn rows(v: &Value) -> Vec<Vec<f64>> {
    let v = match v {
        Value::String(s) => serde_json::from_str::<Value>(s).expect("list in string"),
        other => other.clone(),
    };
    v.as_array()
        .expect("list of rows")
        .iter()
        .map(floats)
        .collect()
}

pub fn load_png(path: &std::path::Path) -> RgbImage {
    images::decode(&std::fs::read(path).unwrap(), 1 << 24).unwrap()
}

/// (max, mean) absolute difference over all channels.
pub fn diff(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut max = 0u8;
    let mut sum = 0u64;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += d as u64;
    }
    (max, sum as f64 / a.as_raw().len() as f64)
}

pub fn params(case: &Value) -> GenerationParams {
    let seeds: Vec<u64> = case["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    for w in seeds.windows(2) {
        assert_eq!(w[1], w[0] + 1, "our requests number seeds consecutively");
    }
    let init_image =
        (case["mode"] == "img2img").then(|| load_png(&fixtures().join("reference/init_64.png")));
    GenerationParams {
        prompt: case["prompt"].as_str().unwrap().into(),
        negative_prompt: case["negative_prompt"].as_str().map(str::to_string),
        width: Some(case["width"].as_u64().unwrap() as u32),
        height: Some(case["height"].as_u64().unwrap() as u32),
        steps: Some(case["steps"].as_u64().unwrap() as u32),
        guidance_scale: Some(case["guidance_scale"].as_f64().unwrap() as f32),
        scheduler: Some(case["scheduler"].as_str().unwrap().into()),
        seed: Some(seeds[0]),
        n: Some(seeds.len() as u32),
        strength: case
            .get("strength")
            .and_then(Value::as_f64)
            .map(|s| s as f32),
        init_image,
        micro: micro(case),
    }
}

/// SDXL micro-conditioning as diffusers took it ((height, width), (top, left)),
/// as our (width, height) / (top, left).
fn micro(case: &Value) -> MicroParams {
    let pair = |key: &str| {
        case.get(key).and_then(Value::as_array).map(|a| {
            let v: Vec<u32> = a.iter().map(|x| x.as_u64().unwrap() as u32).collect();
            (v[0], v[1])
        })
    };
    let swap = |p: Option<(u32, u32)>| p.map(|(h, w)| (w, h));
    MicroParams {
        original_size: swap(pair("original_size")),
        crop_top_left: pair("crops_coords_top_left"),
        target_size: swap(pair("target_size")),
    }
}

/// The reference models: SD 1.5, SD 2.x v-prediction, SDXL.
pub const MODELS: [&str; 3] = ["tiny-sd15", "tiny-sd2v", "tiny-sdxl"];
/// The diffusion transformers: SD 3.5, FLUX.1-dev, FLUX.1-schnell.
pub const DIT_MODELS: [&str; 3] = ["tiny-sd3", "tiny-flux", "tiny-flux-schnell"];

pub fn cases() -> Vec<(String, Value)> {
    cases_of(&MODELS)
}

/// Every committed reference case of `models`, in file-name order.
pub fn cases_of(models: &[&str]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for model in models {
        let dir = fixtures().join("reference").join(model);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".json") && name != "components.json" && name != "schedulers.json" {
                let v: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
                out.push((model.to_string(), v));
            }
        }
    }
    out
}

/// Runs every committed reference case of `models` through
/// `pipeline(model, case)` and fails unless each image is within `max_abs`
/// (any channel) and `mean_abs` (mean) of diffusers' on 0-255 pixels.
/// Prints every image's difference.
pub fn assert_matches_references(
    models: &[&str],
    pipeline: impl Fn(&str, &Value) -> Pipeline,
    max_abs: u8,
    mean_abs: f64,
) {
    let all = cases_of(models);
    assert!(
        all.len() >= 10,
        "expected the committed reference cases, found {}",
        all.len()
    );
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (model, case) in &all {
        let name = case["case"].as_str().unwrap();
        let p = pipeline(model, case);
        let request = p
            .validate(params(case))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let images = p
            .generate(&request)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected_files = case["images"].as_array().unwrap();
        assert_eq!(images.len(), expected_files.len(), "{name}: image count");
        for (img, file) in images.iter().zip(expected_files) {
            let path = fixtures()
                .join("reference")
                .join(model)
                .join(file.as_str().unwrap());
            let (max, mean) = diff(&img.image, &load_png(&path));
            let line = format!(
                "{model}/{name} seed {}: max {max}, mean {mean:.3}",
                img.seed
            );
            if max > max_abs || mean > mean_abs {
                failures.push(line.clone());
            }
            report.push(line);
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "outside tolerance (max {max_abs}, mean {mean_abs}):\n{}",
        failures.join("\n")
    );
}
