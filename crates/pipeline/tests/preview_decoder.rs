//! Previews from a tiny VAE decoder (`--preview-decoder`, or the model
//! folder's own `preview_decoder/`) on ONNX Runtime.
//!
//! The tiny model's own VAE decoder stands in for a TAESD: it has the same
//! interface, and its `config.json` scaling factor tells the executor how to
//! scale the latents. Then the preview of the last Euler step (whose denoised
//! estimate is the final latents) must be the final image itself, at full
//! size, where the latent map gives a 1/8-size approximation.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyaccel_executor_onnx::{DeviceRequest, OnnxConfig, OnnxExecutor};
use anyaccel_pipeline::{Defaults, GenerationParams, Limits, Model, Observer, Outcome, Pipeline};
use common::{diff, fixtures};
use image::RgbImage;

fn pipeline(preview_decoder: Option<&str>) -> Pipeline {
    pipeline_in(&fixtures().join("models/tiny-sd15"), preview_decoder)
}

fn pipeline_in(dir: &Path, preview_decoder: Option<&str>) -> Pipeline {
    let m = Model::load_dir("tiny-sd15", dir).expect("tiny model loads");
    let config = OnnxConfig {
        device: DeviceRequest::Cpu,
        preview_decoder: preview_decoder.map(|p| dir.join(p)),
        ..OnnxConfig::default()
    };
    let exec = OnnxExecutor::load(dir, &m.components(), &config).expect("onnx executor loads");
    Pipeline::new(Arc::new(exec), m, Limits::default(), Defaults::default())
}

/// Collects a preview after every step.
#[derive(Default)]
struct Previews(Mutex<Vec<(usize, RgbImage)>>);

impl Observer for Previews {
    fn wants_preview(&self, _request: usize, _step: usize, _total: usize) -> bool {
        true
    }
    fn on_preview(&self, _r: usize, _i: usize, step: usize, _total: usize, img: RgbImage) {
        self.0.lock().unwrap().push((step, img));
    }
}

fn run(p: &Pipeline) -> (RgbImage, Vec<(usize, RgbImage)>) {
    let request = p
        .validate(GenerationParams {
            prompt: "a lighthouse at dusk".into(),
            width: Some(64),
            height: Some(96),
            steps: Some(3),
            seed: Some(5),
            scheduler: Some("euler".into()),
            ..GenerationParams::default()
        })
        .unwrap();
    let observer = Previews::default();
    let out = p.run_batch(&[&request], &observer).unwrap();
    let Some(Outcome::Completed(images)) = out.outcomes.into_iter().next() else {
        panic!("the run did not complete");
    };
    let previews = observer.0.into_inner().unwrap();
    (images[0].image.clone(), previews)
}

#[test]
fn a_preview_decoder_gives_full_size_previews_ending_in_the_image() {
    let with = pipeline(Some("vae_decoder"));
    assert!(with.executor().capabilities().preview_decoder);
    let (image, previews) = run(&with);
    assert_eq!(
        previews.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for (step, p) in &previews {
        assert_eq!(p.dimensions(), (64, 96), "step {step}");
    }
    let (max, mean) = diff(&previews[2].1, &image);
    assert!(
        max <= 1 && mean < 0.01,
        "last preview vs image: max {max}, mean {mean}"
    );
    // Earlier previews are of a noisier estimate, not copies of the result.
    let (_, early) = diff(&previews[0].1, &image);
    assert!(
        early > 0.5,
        "first preview already equals the image ({early})"
    );

    // Without it, the latent map at 1/8 size; the image itself is unchanged.
    let without = pipeline(None);
    assert!(!without.executor().capabilities().preview_decoder);
    let (same, previews) = run(&without);
    assert_eq!(diff(&same, &image).0, 0);
    assert_eq!(previews[2].1.dimensions(), (8, 12));
}

#[test]
fn a_missing_preview_decoder_is_a_load_error() {
    let dir = fixtures().join("models/tiny-sd15");
    let m = Model::load_dir("tiny-sd15", &dir).unwrap();
    let config = OnnxConfig {
        device: DeviceRequest::Cpu,
        preview_decoder: Some(dir.join("no-such-decoder")),
        ..OnnxConfig::default()
    };
    let err = OnnxExecutor::load(&dir, &m.components(), &config)
        .err()
        .expect("load fails")
        .to_string();
    assert!(
        err.contains("no-such-decoder") && err.contains("preview decoder"),
        "{err}"
    );
}

/// A model folder of its own: the fixture's components linked in, and a copy
/// of its VAE decoder as `preview_decoder/`. Removed on drop.
struct ModelWithDecoder(PathBuf);

impl ModelWithDecoder {
    fn new() -> Self {
        let src = fixtures().join("models/tiny-sd15");
        let dir =
            std::env::temp_dir().join(format!("anyaccel-preview-decoder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            let from = std::fs::canonicalize(entry.path()).unwrap();
            std::os::unix::fs::symlink(from, dir.join(entry.file_name())).unwrap();
        }
        let decoder = dir.join("preview_decoder");
        std::fs::create_dir(&decoder).unwrap();
        for file in ["model.onnx", "config.json"] {
            std::fs::copy(src.join("vae_decoder").join(file), decoder.join(file)).unwrap();
        }
        Self(dir)
    }
}

impl Drop for ModelWithDecoder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_model_folders_own_preview_decoder_is_used_without_the_flag() {
    let folder = ModelWithDecoder::new();
    let p = pipeline_in(&folder.0, None);
    assert!(p.executor().capabilities().preview_decoder);
    let (image, previews) = run(&p);
    assert_eq!(
        previews.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Full size, where the latent map would give 8x12.
    for (step, preview) in &previews {
        assert_eq!(preview.dimensions(), (64, 96), "step {step}");
    }
    let (max, mean) = diff(&previews[2].1, &image);
    assert!(
        max <= 1 && mean < 0.01,
        "last preview vs image: max {max}, mean {mean}"
    );
    // Same image as the fixture's own folder gives.
    let (plain, _) = run(&pipeline(None));
    assert_eq!(diff(&plain, &image).0, 0);
}
