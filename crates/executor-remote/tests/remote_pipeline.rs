//! Images through the remote executor (a real Python sidecar on CPU torch)
//! against the ONNX executor on the same tiny model and seeds.
//!
//! Tolerance: on 0-255 pixels, at most `MAX_ABS` on any channel and a mean
//! absolute difference of at most `MEAN_ABS`: the same bound the pipeline's
//! own ONNX-vs-diffusers test uses. The two executors hold the same weights
//! (checked per component to ~1e-5 by python/scripts/make_diffusers_fixture.py);
//! what remains is PyTorch's kernels versus ONNX Runtime's, amplified by a few
//! denoising steps of a random-weight UNet. The torch sidecar is also compared
//! with diffusers' own reference images (same framework: expected exact).

mod common;

use anyaccel_executor::{Executor, Shapes};
use anyaccel_pipeline::{GenerationParams, Pipeline};
use common::*;
use serde_json::Value;

const MAX_ABS: u8 = 2;
const MEAN_ABS: f64 = 0.02;

/// The committed diffusers reference cases of tiny-sd15, as generation params.
struct Case {
    name: String,
    params: GenerationParams,
    spacing: Option<String>,
    pngs: Vec<String>,
}

fn cases() -> Vec<Case> {
    let dir = fixtures().join("reference/tiny-sd15");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("reference dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("components.json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let case: Value =
                serde_json::from_str(&std::fs::read_to_string(&f).expect("case")).expect("json");
            let seeds: Vec<u64> = case["seeds"]
                .as_array()
                .expect("seeds")
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            let mut p = params(
                case["prompt"].as_str().expect("prompt"),
                seeds[0],
                seeds.len() as u32,
                case["steps"].as_u64().expect("steps") as u32,
                case["scheduler"].as_str().expect("scheduler"),
            );
            p.negative_prompt = case["negative_prompt"].as_str().map(str::to_string);
            p.guidance_scale = case["guidance_scale"].as_f64().map(|g| g as f32);
            p.strength = case
                .get("strength")
                .and_then(Value::as_f64)
                .map(|s| s as f32);
            if case["mode"] == "img2img" {
                p.init_image = Some(load_png(&fixtures().join("reference/init_64.png")));
            }
            let name = case["case"].as_str().expect("case name").to_string();
            let pngs = case["images"]
                .as_array()
                .expect("images")
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let spacing = case["scheduler_overrides"]["timestep_spacing"]
                .as_str()
                .map(str::to_string);
            Case {
                name,
                params: p,
                spacing,
                pngs,
            }
        })
        .collect()
}

fn generate(p: &Pipeline, params: &GenerationParams) -> Vec<image::RgbImage> {
    let request = p.validate(params.clone()).expect("valid request");
    p.generate(&request)
        .expect("generation succeeds")
        .into_iter()
        .map(|g| g.image)
        .collect()
}

#[test]
fn images_match_the_onnx_executor() {
    let remote = spawn(remote_config());
    let caps = remote.capabilities().clone();
    assert_eq!(caps.executor, "remote");
    assert_eq!(caps.shapes, Shapes::Dynamic);
    assert!(caps.vae_encoder);
    println!("sidecar: {} on {}", remote.runtime_info(), caps.device_name);

    let onnx = onnx_executor(&tiny_onnx());
    let all = cases();
    // The spec's case list: txt2img with every scheduler family, a batch, 1-step turbo, img2img.
    assert!(
        all.len() >= 9,
        "expected the committed tiny-sd15 reference cases, found {}",
        all.len()
    );
    let (mut worst_onnx, mut worst_ref) = ((0u8, 0f64), (0u8, 0f64));
    let mut failures = Vec::new();
    for Case {
        name,
        params,
        spacing,
        pngs,
    } in &all
    {
        let ours = generate(&pipeline_with(remote.clone(), spacing.as_deref()), params);
        let onnx = generate(&pipeline_with(onnx.clone(), spacing.as_deref()), params);
        assert_eq!(ours.len(), pngs.len(), "{name}: image count");
        for (i, (img, png)) in ours.iter().zip(pngs).enumerate() {
            let (max, mean) = diff(img, &onnx[i]);
            let reference = load_png(&fixtures().join("reference/tiny-sd15").join(png));
            let (rmax, rmean) = diff(img, &reference);
            println!(
                "{name}[{i}]: vs onnx executor max {max} mean {mean:.4}; vs diffusers reference max {rmax} mean {rmean:.4}"
            );
            worst_onnx = (worst_onnx.0.max(max), worst_onnx.1.max(mean));
            worst_ref = (worst_ref.0.max(rmax), worst_ref.1.max(rmean));
            if max > MAX_ABS || mean > MEAN_ABS || rmax > MAX_ABS || rmean > MEAN_ABS {
                failures.push(format!(
                    "{name}[{i}]: onnx ({max}, {mean:.4}), reference ({rmax}, {rmean:.4})"
                ));
            }
        }
    }
    println!(
        "worst: vs onnx executor max {} mean {:.4}; vs diffusers max {} mean {:.4}",
        worst_onnx.0, worst_onnx.1, worst_ref.0, worst_ref.1
    );
    assert!(
        failures.is_empty(),
        "outside tolerance (max {MAX_ABS}, mean {MEAN_ABS}):\n{}",
        failures.join("\n")
    );
}

/// A torch sidecar told to behave like a Neuron model compiled for batch 2 at
/// 64x64 (UNet batch 4) rejects any other batch, so these images exist only if
/// the executor padded and split every call; they must equal the dynamic ones.
#[test]
fn static_batches_are_padded_and_split() {
    let mut cfg = remote_config();
    cfg.extra_args = ["--static-batch", "2", "--static-size", "64x64"]
        .map(String::from)
        .to_vec();
    let fixed = spawn(cfg);
    assert_eq!(
        fixed.capabilities().shapes,
        Shapes::Static {
            batch_size: 2,
            sizes: vec![(64, 64)]
        }
    );
    let dynamic = spawn(remote_config());
    let (fixed_p, dynamic_p) = (pipeline(fixed.clone()), pipeline(dynamic.clone()));

    // 3 images with guidance: text batch 6 (3 calls of 2), UNet batch 6 (4 + 2 padded
    // to 4), VAE decode 1 at a time (padded to 2).
    let three = params("a lighthouse at dusk", 10, 3, 3, "euler_a");
    // img2img: VAE encode of 1 image, padded to 2.
    let mut img2img = params("a lighthouse at dusk", 7, 1, 4, "ddim");
    img2img.init_image = Some(load_png(&fixtures().join("reference/init_64.png")));
    img2img.strength = Some(0.6);
    // 1 image without guidance: UNet batch 1, padded to 4.
    let mut single = params("a lighthouse at dusk", 3, 1, 2, "euler");
    single.guidance_scale = Some(1.0);
    for p in [three, img2img, single] {
        let a = generate(&fixed_p, &p);
        let b = generate(&dynamic_p, &p);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            let (max, mean) = diff(x, y);
            println!("static vs dynamic (n={:?}): max {max} mean {mean:.4}", p.n);
            assert!(
                max <= 1 && mean < 0.01,
                "padding changed the image: max {max}, mean {mean}"
            );
        }
    }

    // A size that is not compiled is a validation error that lists the sizes.
    let mut big = params("x", 1, 1, 2, "euler");
    big.width = Some(128);
    let err = fixed_p
        .validate(big)
        .expect_err("128x64 is not compiled")
        .to_string();
    assert!(
        err.contains("64x64"),
        "the error lists the compiled sizes: {err}"
    );
}
