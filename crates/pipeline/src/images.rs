//! Pixels in and out: tensor ↔ RGB conversion, safe decoding of caller
//! images, and PNG/JPEG/WebP encoding with the generation parameters.

use std::io::Cursor;
use std::str::FromStr;

use image::{ImageFormat, RgbImage};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image format not accepted; send PNG, JPEG or WebP")]
    Format,
    #[error("image is {width}x{height}; at most {max_pixels} pixels are accepted")]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("image could not be decoded: {0}")]
    Decode(String),
    #[error("image could not be encoded: {0}")]
    Encode(String),
}

/// Output encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
        }
    }
}

/// How an image is encoded for a client: the format and, for JPEG and WebP, the quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encoding {
    pub format: OutputFormat,
    pub quality: Option<u8>,
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            other => Err(format!(
                "unknown output format `{other}`; expected png, jpeg or webp"
            )),
        }
    }
}

/// `[3, h, w]` values in `[-1, 1]` to 8-bit RGB, rounding like diffusers'
/// `numpy_to_pil` (`(x / 2 + 0.5).clamp(0, 1) * 255`, rounded).
pub fn tensor_to_rgb(chw: &[f32], width: u32, height: u32) -> RgbImage {
    let plane = (width * height) as usize;
    let mut buf = vec![0u8; plane * 3];
    for p in 0..plane {
        for c in 0..3 {
            let v = (chw[c * plane + p] / 2.0 + 0.5).clamp(0.0, 1.0);
            buf[p * 3 + c] = (v * 255.0).round() as u8;
        }
    }
    RgbImage::from_raw(width, height, buf).unwrap_or_else(|| RgbImage::new(width, height))
}

/// 8-bit RGB to `[3, h, w]` in `[-1, 1]`, as diffusers' image processor does.
pub fn rgb_to_tensor(img: &RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; plane * 3];
    for (p, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + p] = px[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    out
}

/// Decodes a caller's PNG, JPEG or WebP, refusing other formats and images
/// over `max_pixels` before any pixel buffer is allocated.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, ImageError> {
    let format = image::guess_format(bytes).map_err(|_| ImageError::Format)?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP
    ) {
        return Err(ImageError::Format);
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    if width as u64 * height as u64 > max_pixels {
        return Err(ImageError::TooLarge {
            width,
            height,
            max_pixels,
        });
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    Ok(img.to_rgb8())
}

/// Resizes to exactly `width`×`height` (Lanczos) unless it already is.
pub fn fit(img: RgbImage, width: u32, height: u32) -> RgbImage {
    if img.dimensions() == (width, height) {
        img
    } else {
        image::imageops::resize(&img, width, height, image::imageops::FilterType::Lanczos3)
    }
}

/// Encodes an image; PNGs carry `parameters` (unless empty) as a tEXt chunk
/// (A1111's convention).
/// `quality` (0–100) applies to JPEG; WebP output is lossless.
pub fn encode(
    img: &RgbImage,
    format: OutputFormat,
    quality: Option<u8>,
    parameters: &str,
) -> Result<Vec<u8>, ImageError> {
    let enc = |e: &dyn std::fmt::Display| ImageError::Encode(e.to_string());
    let mut out = Vec::new();
    match format {
        OutputFormat::Png => {
            let mut encoder = png::Encoder::new(&mut out, img.width(), img.height());
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            if !parameters.is_empty() {
                encoder
                    .add_text_chunk("parameters".into(), parameters.into())
                    .map_err(|e| enc(&e))?;
            }
            let mut writer = encoder.write_header().map_err(|e| enc(&e))?;
            writer.write_image_data(img.as_raw()).map_err(|e| enc(&e))?;
            writer.finish().map_err(|e| enc(&e))?;
        }
        OutputFormat::Jpeg => {
            let q = quality.unwrap_or(90).clamp(1, 100);
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, q);
            img.write_with_encoder(encoder).map_err(|e| enc(&e))?;
        }
        OutputFormat::Webp => {
            let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            img.write_with_encoder(encoder).map_err(|e| enc(&e))?;
        }
    }
    Ok(out)
}

/// Reads the `parameters` text chunk of a PNG, if any.
pub fn png_parameters(bytes: &[u8]) -> Option<String> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let reader = decoder.read_info().ok()?;
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            reader
                .info()
                .utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .and_then(|t| t.get_text().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_parameters() {
        let img = RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]));
        let bytes = encode(&img, OutputFormat::Png, None, "a cat\nSteps: 4").unwrap();
        assert_eq!(png_parameters(&bytes).as_deref(), Some("a cat\nSteps: 4"));
        assert_eq!(decode(&bytes, 64).unwrap(), img);
    }

    #[test]
    fn refuses_large_and_unknown_images() {
        let img = RgbImage::new(16, 16);
        let bytes = encode(&img, OutputFormat::Png, None, "").unwrap();
        assert!(matches!(
            decode(&bytes, 100),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(matches!(
            decode(b"GIF89a....", 100),
            Err(ImageError::Format)
        ));
        assert!(matches!(
            decode(b"not an image", 100),
            Err(ImageError::Format)
        ));
    }

    #[test]
    fn tensor_conversion_round_trips() {
        let img = RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 60, y as u8 * 100, 7]));
        let t = rgb_to_tensor(&img);
        assert_eq!(tensor_to_rgb(&t, 4, 2), img);
    }
}
