//! Images through the remote executor (a real Python sidecar on CPU torch)
//! against the ONNX executor on the same tiny models and seeds: SD 1.5 and
//! SDXL (two text encoders, penultimate layers, pooled embeddings, micro-
//! conditioning).
//!
//! Tolerance: on 0-255 pixels, at most `MAX_ABS` on any channel and a mean
//! absolute difference of at most `MEAN_ABS`: the same bound the pipeline's
//! own ONNX-vs-diffusers test uses. The two executors hold the same weights
//! (checked per component to ~1e-5 when the fixtures were made); what remains
//! is PyTorch's kernels versus ONNX Runtime's, amplified by a few denoising
//! steps of a random-weight UNet. The torch sidecar is also compared with
//! diffusers' own reference images (same framework: expected exact).

mod common;

use std::path::Path;

use anyaccel_executor::{Component, Executor, Shapes, TimestepInput};
use anyaccel_executor_remote::TorchCompile;
use anyaccel_pipeline::request::MicroParams;
use anyaccel_pipeline::{GenerationParams, Pipeline};
use common::*;
use serde_json::Value;

const MAX_ABS: u8 = 2;
const MEAN_ABS: f64 = 0.02;

/// A committed diffusers reference case, as generation params.
struct Case {
    name: String,
    params: GenerationParams,
    spacing: Option<String>,
    pngs: Vec<String>,
}

/// (width, height) or (top, left) from diffusers' (height, width) / (top, left) pairs.
fn pair(case: &Value, key: &str, swap: bool) -> Option<(u32, u32)> {
    let v: Vec<u32> = case
        .get(key)?
        .as_array()?
        .iter()
        .filter_map(|x| x.as_u64().map(|x| x as u32))
        .collect();
    let (a, b) = (*v.first()?, *v.get(1)?);
    Some(if swap { (b, a) } else { (a, b) })
}

fn cases(model: &str) -> Vec<Case> {
    let dir = fixtures().join("reference").join(model);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("reference dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "json")
                && !p.ends_with("components.json")
                && !p.ends_with("schedulers.json")
        })
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
            p.width = case["width"].as_u64().map(|w| w as u32).or(p.width);
            p.height = case["height"].as_u64().map(|h| h as u32).or(p.height);
            p.negative_prompt = case["negative_prompt"].as_str().map(str::to_string);
            p.guidance_scale = case["guidance_scale"].as_f64().map(|g| g as f32);
            p.strength = case
                .get("strength")
                .and_then(Value::as_f64)
                .map(|s| s as f32);
            p.micro = MicroParams {
                original_size: pair(&case, "original_size", true),
                crop_top_left: pair(&case, "crops_coords_top_left", false),
                target_size: pair(&case, "target_size", true),
            };
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

/// Every reference case of `model` through the remote pipeline (model folder
/// `remote_dir`) and the ONNX one (`onnx_dir`), against each other and diffusers.
fn compare(
    model: &str,
    remote: &std::sync::Arc<anyaccel_executor_remote::RemoteExecutor>,
    remote_dir: &Path,
    onnx_dir: &Path,
    min_cases: usize,
) {
    let onnx = onnx_executor(onnx_dir);
    let all = cases(model);
    assert!(
        all.len() >= min_cases,
        "expected the committed {model} reference cases, found {}",
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
        let ours = generate(
            &pipeline_for(remote.clone(), remote_dir, spacing.as_deref()),
            params,
        );
        let onnx = generate(
            &pipeline_for(onnx.clone(), onnx_dir, spacing.as_deref()),
            params,
        );
        assert_eq!(ours.len(), pngs.len(), "{name}: image count");
        for (i, (img, png)) in ours.iter().zip(pngs).enumerate() {
            let (max, mean) = diff(img, &onnx[i]);
            let reference = load_png(&fixtures().join("reference").join(model).join(png));
            let (rmax, rmean) = diff(img, &reference);
            println!(
                "{model}/{name}[{i}]: vs onnx executor max {max} mean {mean:.4}; vs diffusers reference max {rmax} mean {rmean:.4}"
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
        "{model} worst: vs onnx executor max {} mean {:.4}; vs diffusers max {} mean {:.4}",
        worst_onnx.0, worst_onnx.1, worst_ref.0, worst_ref.1
    );
    assert!(
        failures.is_empty(),
        "outside tolerance (max {MAX_ABS}, mean {MEAN_ABS}):\n{}",
        failures.join("\n")
    );
}

#[test]
fn images_match_the_onnx_executor() {
    let remote = spawn(remote_config());
    let caps = remote.capabilities().clone();
    assert_eq!(caps.executor, "remote");
    assert_eq!(caps.shapes, Shapes::Dynamic);
    assert_eq!(caps.timestep, TimestepInput::PerSample);
    assert!(caps.vae_encoder);
    println!("sidecar: {} on {}", remote.runtime_info(), caps.device_name);
    // The spec's case list: txt2img with every scheduler family, a batch, 1-step turbo, img2img.
    compare("tiny-sd15", &remote, &tiny_onnx(), &tiny_onnx(), 9);
}

/// SDXL through the sidecar: the pipeline reads the diffusers folder the
/// sidecar serves (tokenizers, scheduler, family), as a deployment would.
#[test]
fn sdxl_images_match_the_onnx_executor() {
    let remote = spawn(remote_config_for(&tiny_sdxl_diffusers()));
    assert_eq!(remote.pipeline_class(), "StableDiffusionXLPipeline");
    assert!(remote.components().contains(&Component::TextEncoder2));
    assert_eq!(remote.capabilities().timestep, TimestepInput::PerSample);
    compare(
        "tiny-sdxl",
        &remote,
        &tiny_sdxl_diffusers(),
        &tiny_sdxl_onnx(),
        10,
    );
}

/// `--sidecar-compile`: the sidecar wraps its UNet in torch.compile (Inductor's
/// C++ kernels on the CPU; the CUDA modes are timed by the GPU check) and
/// draws the eager sidecar's images.
#[test]
fn a_compiled_denoiser_draws_the_eager_images() {
    let mut cfg = remote_config();
    cfg.compile = TorchCompile::Default;
    let compiled = spawn(cfg);
    assert!(
        compiled.runtime_info().ends_with("/ torch.compile default"),
        "{}",
        compiled.runtime_info()
    );
    assert_eq!(
        compiled.capabilities().runtime,
        format!("python sidecar: {}", compiled.runtime_info())
    );
    let eager = spawn(remote_config());
    let p = params("a lighthouse at dusk", 5, 1, 3, "euler");
    let a = generate(&pipeline(compiled.clone()), &p);
    let b = generate(&pipeline(eager.clone()), &p);
    let (max, mean) = diff(&a[0], &b[0]);
    println!("compiled vs eager sidecar: max {max} mean {mean:.4}");
    assert!(max <= 1 && mean < 0.01, "max {max}, mean {mean}");
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

/// SDXL on a Neuron-style static sidecar (both text encoders batch 2, UNet 4):
/// the same images as the dynamic one.
#[test]
fn static_sdxl_batches_are_padded_and_split() {
    let mut cfg = remote_config_for(&tiny_sdxl_diffusers());
    cfg.extra_args = ["--static-batch", "2", "--static-size", "64x64"]
        .map(String::from)
        .to_vec();
    let fixed = spawn(cfg);
    let dynamic = spawn(remote_config_for(&tiny_sdxl_diffusers()));
    let dir = tiny_sdxl_diffusers();
    let mut p = params("a lighthouse at dusk", 10, 3, 3, "euler_a");
    p.guidance_scale = Some(5.0);
    let a = generate(&pipeline_for(fixed.clone(), &dir, None), &p);
    let b = generate(&pipeline_for(dynamic.clone(), &dir, None), &p);
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        let (max, mean) = diff(x, y);
        println!("sdxl static vs dynamic: max {max} mean {mean:.4}");
        assert!(
            max <= 1 && mean < 0.01,
            "padding changed the image: max {max}, mean {mean}"
        );
    }
}
