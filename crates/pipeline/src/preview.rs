//! Previews of an image while it forms: the denoised latents mapped to RGB
//! by a fixed linear map per model family, then upscaled. No VAE runs, so a
//! preview costs a matrix product over the latent pixels and a resize.
//!
//! The maps are empirical least-squares fits of each VAE's decoded colours
//! to its latent channels. Provenance of the numbers: SD 1.x/2.x from
//! Keturn's analysis of the SD VAE latent space (as revised in ComfyUI's
//! `comfy/latent_formats.py`), SDXL, SD3 and FLUX.1 from ComfyUI's
//! `comfy/latent_formats.py` (their `latent_rgb_factors` and biases). They
//! apply to latents in the denoiser's space (VAE latents after the scaling
//! and shift factors), which is where the pipeline's latents live.

use image::RgbImage;

use crate::ModelFamily;

const SD: [[f32; 3]; 4] = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
];

const SDXL: [[f32; 3]; 4] = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
];
const SDXL_BIAS: [f32; 3] = [0.1084, -0.0175, -0.0011];

const SD3: [[f32; 3]; 16] = [
    [-0.0922, -0.0175, 0.0749],
    [0.0311, 0.0633, 0.0954],
    [0.1994, 0.0927, 0.0458],
    [0.0856, 0.0339, 0.0902],
    [0.0587, 0.0272, -0.0496],
    [-0.0006, 0.1104, 0.0309],
    [0.0978, 0.0306, 0.0427],
    [-0.0042, 0.1038, 0.1358],
    [-0.0194, 0.0020, 0.0669],
    [-0.0488, 0.0130, -0.0268],
    [0.0922, 0.0988, 0.0951],
    [-0.0278, 0.0524, -0.0542],
    [0.0332, 0.0456, 0.0895],
    [-0.0069, -0.0030, -0.0810],
    [-0.0596, -0.0465, -0.0293],
    [-0.1448, -0.1463, -0.1189],
];
const SD3_BIAS: [f32; 3] = [0.2394, 0.2135, 0.1925];

const FLUX: [[f32; 3]; 16] = [
    [-0.0346, 0.0244, 0.0681],
    [0.0034, 0.0210, 0.0687],
    [0.0275, -0.0668, -0.0433],
    [-0.0174, 0.0160, 0.0617],
    [0.0859, 0.0721, 0.0329],
    [0.0004, 0.0383, 0.0115],
    [0.0405, 0.0861, 0.0915],
    [-0.0236, -0.0185, -0.0259],
    [-0.0245, 0.0250, 0.1180],
    [0.1008, 0.0755, -0.0421],
    [-0.0515, 0.0201, 0.0011],
    [0.0428, -0.0012, -0.0036],
    [0.0817, 0.0765, 0.0749],
    [-0.1264, -0.0522, -0.1103],
    [-0.0280, -0.0881, -0.0499],
    [-0.1262, -0.0982, -0.0778],
];
const FLUX_BIAS: [f32; 3] = [-0.0329, -0.0718, -0.0851];

/// A family's latent-to-RGB map: RGB in about [-1, 1] = bias + Σ latent[c] · factors[c].
fn factors(family: ModelFamily) -> (&'static [[f32; 3]], [f32; 3]) {
    match family {
        ModelFamily::StableDiffusion => (&SD, [0.0; 3]),
        ModelFamily::StableDiffusionXl => (&SDXL, SDXL_BIAS),
        ModelFamily::StableDiffusion3 => (&SD3, SD3_BIAS),
        ModelFamily::Flux => (&FLUX, FLUX_BIAS),
    }
}

/// A `width`×`height` preview of `latents` (`[channels, h, w]`, denoiser
/// space). `None` when the latents have another channel count than the
/// family's map (a model this map does not describe).
pub fn latent_preview(
    family: ModelFamily,
    latents: &[f32],
    shape: [usize; 3],
    width: u32,
    height: u32,
) -> Option<RgbImage> {
    let (map, bias) = factors(family);
    let [channels, h, w] = shape;
    if channels != map.len() || latents.len() != channels * h * w || h == 0 || w == 0 {
        return None;
    }
    let plane = h * w;
    let mut small = RgbImage::new(w as u32, h as u32);
    for (p, px) in small.pixels_mut().enumerate() {
        let mut rgb = bias;
        for (c, f) in map.iter().enumerate() {
            let v = latents[c * plane + p];
            for k in 0..3 {
                rgb[k] += v * f[k];
            }
        }
        px.0 = rgb.map(|v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8);
    }
    Some(upscale(small, width, height))
}

/// Resizes a latent-resolution preview to the image's size. Bilinear: the
/// latent grid is 8× coarser than the image, and smooth reads better than
/// blocks.
pub fn upscale(img: RgbImage, width: u32, height: u32) -> RgbImage {
    if img.dimensions() == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width, height, image::imageops::FilterType::Triangle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channel_lights_up_its_colour() {
        // SD channel 3 alone, negative: its factors are most negative in blue,
        // so -1 there reads as strongly blue.
        let mut lat = vec![0.0; 4 * 2 * 2];
        for p in 0..4 {
            lat[3 * 4 + p] = -1.0;
        }
        let img = latent_preview(ModelFamily::StableDiffusion, &lat, [4, 2, 2], 2, 2).unwrap();
        let [r, g, b] = img.get_pixel(0, 0).0;
        let want = |f: f32| ((1.0 - f) * 127.5).round() as u8;
        assert_eq!([r, g, b], [want(-0.2120), want(-0.2616), want(-0.7177)]);
        assert!(b > g && g > r, "{r} {g} {b}");
    }

    #[test]
    fn zero_latents_give_the_bias_colour_at_the_requested_size() {
        let lat = vec![0.0; 16 * 4 * 4];
        let img = latent_preview(ModelFamily::StableDiffusion3, &lat, [16, 4, 4], 32, 32).unwrap();
        assert_eq!(img.dimensions(), (32, 32));
        let want = SD3_BIAS.map(|v| ((v + 1.0) * 127.5).round() as u8);
        assert_eq!(img.get_pixel(17, 5).0, want);
    }

    #[test]
    fn a_map_that_does_not_fit_gives_none() {
        let lat = vec![0.0; 4 * 2 * 2];
        assert!(latent_preview(ModelFamily::Flux, &lat, [4, 2, 2], 2, 2).is_none());
        assert!(latent_preview(ModelFamily::StableDiffusion, &lat[..3], [4, 2, 2], 2, 2).is_none());
    }
}
