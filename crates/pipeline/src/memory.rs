//! The memory preflight: before any weights are loaded, compare what a model
//! needs (its weights, plus the activations of the largest configured size
//! and batch) with what the device has, and refuse with both numbers and
//! what would fit, instead of being killed for memory halfway through a
//! load or a request. Requests are checked against the same estimate.
//!
//! The activation estimate is deliberately simple and on the high side:
//! the largest attention's score matrices (ONNX Runtime's CPU graphs
//! materialise them), a few copies of the denoiser's hidden states, and the
//! VAE decoder's full-resolution feature maps for one image.

use std::path::Path;

use anyaccel_executor::Component;
use serde::Serialize;
use serde_json::Value;

use crate::ModelFamily;
use crate::model::ModelInfo;

/// A byte count in the largest binary unit that keeps it at or above one,
/// so a 48 GB model and a 2 MB test model both read sensibly.
fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    if value < 1024.0 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    value /= 1024.0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The model doesn't fit the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{model} needs {} ({} of weights + {} of activations at {width}x{height}, {images} image(s) per batch) \
     but the device has {}{}; {advice}",
    size(self.need()), size(*weights), size(*activations), size(*available), source_note(measured_by)
)]
pub struct DoesNotFit {
    pub model: String,
    pub weights: u64,
    pub activations: u64,
    pub available: u64,
    /// Where `available` came from.
    pub measured_by: &'static str,
    pub width: u32,
    pub height: u32,
    pub images: usize,
    /// What would fit instead.
    pub advice: String,
}

fn source_note(source: &str) -> String {
    if source.is_empty() {
        String::new()
    } else {
        format!(" ({source})")
    }
}

impl DoesNotFit {
    pub fn need(&self) -> u64 {
        self.weights + self.activations
    }
}

/// What the model holds and how much the device has, kept for checking requests.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryBudget {
    pub weights_bytes: u64,
    pub available_bytes: u64,
    /// Where `available_bytes` came from (`--memory-limit`, MemAvailable, a cgroup limit).
    pub source: &'static str,
    #[serde(skip)]
    shape: DenoiserShape,
    #[serde(skip)]
    model: String,
}

/// The denoiser facts the activation estimate needs.
#[derive(Debug, Clone, Copy)]
struct DenoiserShape {
    family: ModelFamily,
    heads: usize,
    hidden: usize,
    /// Text tokens the DiT attends over jointly with the image.
    text_tokens: usize,
    /// Latent downsampling at the largest attention (1 for DiTs and SD 1.x's
    /// first level, 2 for SDXL whose first level has none).
    attention_stride: usize,
    patch: usize,
}

impl DenoiserShape {
    fn read(info: &ModelInfo) -> Self {
        let family = info.family;
        let config = std::fs::read_to_string(
            info.root
                .join(family.denoiser().folder())
                .join("config.json"),
        )
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .unwrap_or(Value::Null);
        let num = |key: &str| config.get(key).and_then(Value::as_u64).map(|v| v as usize);
        if family.is_flow() {
            let heads = num("num_attention_heads").unwrap_or(24);
            let head_dim = num("attention_head_dim").unwrap_or(128);
            let text_tokens = match family {
                ModelFamily::Flux => 512,
                _ => 77 + 256,
            };
            return Self {
                family,
                heads,
                hidden: heads * head_dim,
                text_tokens,
                attention_stride: 1,
                patch: num("patch_size").unwrap_or(2),
            };
        }
        let blocks: Vec<usize> = config
            .get("block_out_channels")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_else(|| vec![320, 640, 1280, 1280]);
        let first_attends = config
            .get("down_block_types")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .is_none_or(|t| t.contains("Attn"));
        let level = if first_attends { 0 } else { 1 };
        let hidden = blocks.get(level).copied().unwrap_or(320);
        Self {
            family,
            // Heads of 64 channels at the largest attention (SD 1.x: 8 of 40; close enough).
            heads: (hidden / 64).max(1),
            hidden,
            text_tokens: 77,
            attention_stride: 1 << level,
            patch: 1,
        }
    }

    /// Bytes of activations for `rows` denoiser rows at `width`×`height`,
    /// plus one image's VAE decode.
    fn activations(&self, scale: u32, width: u32, height: u32, rows: usize) -> u64 {
        let f = (scale as usize) * self.attention_stride * self.patch;
        let image_tokens = (width as usize / f) * (height as usize / f);
        let tokens = if self.family.is_flow() {
            image_tokens + self.text_tokens
        } else {
            image_tokens
        };
        // f32 scores and softmax output of the largest attention, and a
        // dozen copies of the hidden states around it.
        let attention = 2 * self.heads * tokens * tokens * 4;
        let hidden = 12 * tokens * self.hidden * 4;
        // The VAE decoder's last blocks: ~128 channels at full resolution, a
        // few buffers live at once, f32.
        let vae = width as usize * height as usize * 128 * 4 * 4;
        (rows * (attention + hidden) + vae) as u64
    }
}

/// Bytes of the weight files of `components` (ONNX graphs and external
/// data, or diffusers' safetensors), sparse files counted at their size.
pub fn weights_bytes(root: &Path, components: &[Component]) -> u64 {
    let mut total = 0;
    let mut seen_vae = false;
    for c in components {
        let mut dirs = vec![root.join(c.folder())];
        if matches!(c, Component::VaeDecoder | Component::VaeEncoder) && !seen_vae {
            // diffusers keeps both halves in vae/.
            dirs.push(root.join("vae"));
            seen_vae = true;
        }
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".json") || name.ends_with(".txt") {
                    continue;
                }
                if let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    total += m.len();
                }
            }
        }
    }
    total
}

/// Memory the process may use now: `MemAvailable`, or the cgroup's limit
/// when lower (containers), with where the number came from.
pub fn host_available() -> Option<(u64, &'static str)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let available = kb * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    match cgroup {
        Some(limit) if limit.saturating_sub(used) < available => {
            Some((limit.saturating_sub(used), "the container's memory limit"))
        }
        _ => Some((available, "MemAvailable")),
    }
}

impl MemoryBudget {
    /// Checks that the weights plus the activations of the largest of
    /// `sizes` at `batch` images (two rows each under classifier-free
    /// guidance) fit in `available` bytes.
    pub fn preflight(
        info: &ModelInfo,
        components: &[Component],
        sizes: &[(u32, u32)],
        batch: usize,
        (available, source): (u64, &'static str),
    ) -> Result<Self, DoesNotFit> {
        let budget = Self {
            weights_bytes: weights_bytes(&info.root, components),
            available_bytes: available,
            source,
            shape: DenoiserShape::read(info),
            model: info.id.clone(),
        };
        let largest = sizes
            .iter()
            .copied()
            .max_by_key(|(w, h)| *w as u64 * *h as u64)
            .unwrap_or((info.native_size, info.native_size));
        budget.check(info, largest.0, largest.1, batch.max(1), true)?;
        Ok(budget)
    }

    /// Rows the denoiser runs for `images` (guided families run two per image).
    fn rows(info: &ModelInfo, images: usize, guided: bool) -> usize {
        let cfg =
            guided && info.family.guidance(info.guidance_embeds) == crate::Guidance::Classifier;
        images * if cfg { 2 } else { 1 }
    }

    /// Estimated activation bytes of `images` images at `width`×`height`.
    pub fn activations(
        &self,
        info: &ModelInfo,
        width: u32,
        height: u32,
        images: usize,
        guided: bool,
    ) -> u64 {
        self.shape.activations(
            info.vae_scale_factor,
            width,
            height,
            Self::rows(info, images, guided),
        )
    }

    /// Whether `images` images at `width`×`height` fit; `guided` assumes
    /// classifier-free guidance where the family has it.
    pub fn check(
        &self,
        info: &ModelInfo,
        width: u32,
        height: u32,
        images: usize,
        guided: bool,
    ) -> Result<(), DoesNotFit> {
        let need = |w: u32, h: u32, n: usize| self.activations(info, w, h, n, guided);
        let activations = need(width, height, images);
        if self.weights_bytes + activations <= self.available_bytes {
            return Ok(());
        }
        let room = self.available_bytes.saturating_sub(self.weights_bytes);
        let advice = if self.weights_bytes >= self.available_bytes {
            let verdict = |bytes: u64| {
                if bytes + activations <= self.available_bytes {
                    "would fit"
                } else {
                    "would not fit either"
                }
            };
            let (half, quarter) = (self.weights_bytes / 2, self.weights_bytes / 4);
            format!(
                "the weights alone do not fit: an fp16 or bf16 artifact (about {}, \
                 `anyaccel compile --target onnx-fp16` or the sidecar's --dtype) {}; \
                 int8 (about {}) {}",
                size(half),
                verdict(half),
                size(quarter),
                verdict(quarter)
            )
        } else if let Some(n) = (1..images).rev().find(|&n| need(width, height, n) <= room) {
            format!("{n} image(s) per batch fit at {width}x{height} (--max-batch {n})")
        } else {
            // The largest square at one image that fits, in the family's steps.
            let m = info.family.size_multiple();
            let mut side = width.min(height) / m * m;
            while side > m && need(side, side, 1) > room {
                side -= m;
            }
            if need(side, side, 1) <= room {
                format!("one image fits up to about {side}x{side} (--sizes)")
            } else {
                "no size fits beside the weights: use a smaller dtype".to_string()
            }
        };
        Err(DoesNotFit {
            model: self.model.clone(),
            weights: self.weights_bytes,
            activations,
            available: self.available_bytes,
            measured_by: self.source,
            width,
            height,
            images,
            advice,
        })
    }
}
