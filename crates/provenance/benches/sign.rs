//! Signing cost per image: `cargo bench -p anyaccel-provenance --bench sign --profile dev`.
//!
//! Signs a 512×512 PNG (with an A1111 `parameters` chunk), JPEG (q90) and
//! lossless WebP 50 times each with the development signer (ES256) and prints
//! the mean and p95 wall time and the bytes the manifest adds. Prints figures
//! only; nothing here asserts on time.

use std::time::{Duration, Instant};

use anyaccel_provenance::{C2paArgs, ImageFacts, ImageFormat, Signer};

const SIDE: u32 = 512;
const RUNS: usize = 50;
const WARMUP: usize = 5;

/// A gradient with deterministic noise, so the encoded sizes are like a
/// generated picture's (a 512×512 PNG of a real output is a few hundred kB).
fn picture() -> image::RgbImage {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 48) as u32
    };
    image::RgbImage::from_fn(SIDE, SIDE, |x, y| {
        image::Rgb([
            ((x * 200 / SIDE) + noise()).min(255) as u8,
            ((y * 200 / SIDE) + noise()).min(255) as u8,
            (((x + y) * 100 / SIDE) + noise()).min(255) as u8,
        ])
    })
}

fn encode(format: ImageFormat) -> Vec<u8> {
    let img = picture();
    let mut out = Vec::new();
    match format {
        ImageFormat::Png => {
            let mut encoder = png::Encoder::new(&mut out, SIDE, SIDE);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            encoder
                .add_text_chunk(
                    "parameters".into(),
                    "a lighthouse at dusk\nSteps: 20, Sampler: Euler a, Seed: 42".into(),
                )
                .expect("text chunk");
            let mut writer = encoder.write_header().expect("png header");
            writer.write_image_data(img.as_raw()).expect("png data");
            writer.finish().expect("png finish");
        }
        ImageFormat::Jpeg => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
            img.write_with_encoder(enc).expect("jpeg");
        }
        ImageFormat::Webp => {
            let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            img.write_with_encoder(enc).expect("webp");
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let t = Instant::now();
    let signer = Signer::from_args(&C2paArgs::default())
        .expect("development signer")
        .expect("on by default");
    println!(
        "start-up (generate and check the development certificate): {:.2} ms",
        ms(t.elapsed())
    );
    let facts = ImageFacts {
        software_version: "0.1.0".into(),
        model_id: "onnx-community/stable-diffusion-v1-5-ONNX".into(),
        model_hash: "sha256:6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
            .into(),
        prompt: Some("a lighthouse at dusk".into()),
        negative_prompt: None,
        seed: Some(42),
    };
    println!(
        "{:<5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "fmt", "image B", "+manifest", "mean ms", "p50 ms", "p95 ms", "min ms", "max ms"
    );
    for format in ImageFormat::ALL {
        let image = encode(format);
        let mut signed_len = 0;
        for _ in 0..WARMUP {
            signed_len = signer.sign(&image, format, &facts).expect("sign").len();
        }
        let mut times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let out = signer.sign(&image, format, &facts).expect("sign");
                let d = t.elapsed();
                std::hint::black_box(out);
                d
            })
            .collect();
        times.sort();
        let mean = times.iter().sum::<Duration>() / RUNS as u32;
        let p95 = times[(RUNS * 95).div_ceil(100) - 1];
        println!(
            "{:<5} {:>10} {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            format.to_string(),
            image.len(),
            signed_len - image.len(),
            ms(mean),
            ms(times[RUNS / 2]),
            ms(p95),
            ms(times[0]),
            ms(times[RUNS - 1])
        );
    }
}
