//! A Stable Diffusion model folder in diffusers/optimum's ONNX layout, from
//! a local path or a Hugging Face Hub repo.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use anyaccel_executor::Component;

use crate::family::{ModelFamily, UnsupportedPipeline};
use crate::scheduler::{SchedulerConfig, SchedulerKind};
use crate::tokenizer::{PromptTokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("model `{id}` could not be fetched from the Hugging Face Hub: {message}")]
    Hub { id: String, message: String },
    #[error("`{0}` is neither a model folder nor a Hub repo id (owner/name)")]
    NotFound(String),
    #[error("{path}: {source}", path = .path.display())]
    Unsupported {
        path: PathBuf,
        #[source]
        source: UnsupportedPipeline,
    },
}

/// Architecture facts the pipeline needs, read from the components' configs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// How the model was named (folder path or Hub id).
    pub id: String,
    /// First 10 hex digits of a SHA-256 over the component weights, like A1111's short hash.
    pub hash: String,
    pub root: PathBuf,
    pub family: ModelFamily,
    /// `_class_name` of `model_index.json`, e.g. `StableDiffusionXLPipeline`.
    pub class_name: String,
    /// Latent channels of the VAE (4 for SD/SDXL, 16 for SD3 and Flux).
    pub latent_channels: usize,
    /// Pixels per latent cell (8 for every released SD VAE).
    pub vae_scale_factor: u32,
    /// Multiplier from VAE latents to denoiser latents.
    pub vae_scaling_factor: f32,
    /// Offset subtracted from VAE latents before scaling (SD3, Flux; else 0).
    pub vae_shift_factor: f32,
    /// Native resolution, the denoiser's `sample_size * vae_scale_factor`.
    pub native_size: u32,
    /// Whether the transformer takes a guidance input (FLUX.1-dev).
    pub guidance_embeds: bool,
    pub scheduler_config: SchedulerConfig,
    /// The scheduler the model folder names, if we implement it.
    pub default_scheduler: SchedulerKind,
    /// SDXL: an empty negative prompt conditions on zeros, not on the encoded
    /// empty string (`model_index.json`'s `force_zeros_for_empty_prompt`).
    pub force_zeros_for_empty_prompt: bool,
}

/// The model's files, loaded and checked.
pub struct Model {
    pub info: ModelInfo,
    /// One tokenizer per text encoder, in the family's order.
    tokenizers: Vec<(Component, PromptTokenizer)>,
}

impl Model {
    /// Loads from a local folder, or downloads a Hub repo into the local cache.
    pub fn open(spec: &str) -> Result<Self, ModelError> {
        let root = resolve(spec)?;
        Self::load_dir(spec, &root)
    }

    pub fn load_dir(id: &str, root: &Path) -> Result<Self, ModelError> {
        let index = root.join("model_index.json");
        let index_json = read_json(&index)?;
        let Some(class_name) = index_json.get("_class_name").and_then(Value::as_str) else {
            return Err(ModelError::File {
                path: index,
                message: "has no `_class_name`; expected a diffusers pipeline index".into(),
            });
        };
        let class_name = class_name.to_string();
        let family =
            ModelFamily::detect(&index_json, root).map_err(|source| ModelError::Unsupported {
                path: index.clone(),
                source,
            })?;
        let force_zeros_for_empty_prompt = family == ModelFamily::StableDiffusionXl
            && index_json
                .get("force_zeros_for_empty_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true);
        let sched_path = root.join("scheduler/scheduler_config.json");
        let scheduler_config: SchedulerConfig = serde_json::from_value(read_json(&sched_path)?)
            .map_err(|e| ModelError::File {
                path: sched_path.clone(),
                message: format!("not a scheduler config: {e}"),
            })?;
        let default_scheduler = scheduler_config
            .class_name
            .as_deref()
            .and_then(|c| SchedulerKind::from_class_name(c, &scheduler_config))
            // PNDM (SD 1.x's default) is not implemented; Euler is the usual stand-in.
            .unwrap_or(SchedulerKind::Euler);
        let mut tokenizers = Vec::new();
        for &encoder in family.text_encoders() {
            // text_encoder_2 reads tokenizer_2/, as diffusers names them.
            let folder = encoder.folder().replace("text_encoder", "tokenizer");
            tokenizers.push((encoder, PromptTokenizer::from_dir(&root.join(folder))?));
        }

        let denoiser = optional_config(&root.join(family.denoiser().folder()).join("config.json"))?;
        // optimum's ONNX layout has vae_decoder/; diffusers' own has vae/.
        let vae = match optional_config(&root.join("vae_decoder/config.json"))? {
            Some(v) => Some(v),
            None => optional_config(&root.join("vae/config.json"))?,
        };
        let latent_channels = vae
            .as_ref()
            .and_then(|c| c.get("latent_channels"))
            .or_else(|| denoiser.as_ref().and_then(|c| c.get("in_channels")))
            .and_then(Value::as_u64)
            .unwrap_or(4) as usize;
        let vae_scale_factor = vae
            .as_ref()
            .and_then(|c| c.get("block_out_channels"))
            .and_then(Value::as_array)
            .map(|a| 1u32 << (a.len().saturating_sub(1)))
            .unwrap_or(8);
        let vae_scaling_factor = vae
            .as_ref()
            .and_then(|c| c.get("scaling_factor"))
            .and_then(Value::as_f64)
            .unwrap_or(0.18215) as f32;
        let vae_shift_factor = vae
            .as_ref()
            .and_then(|c| c.get("shift_factor"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0) as f32;
        let guidance_embeds = denoiser
            .as_ref()
            .and_then(|c| c.get("guidance_embeds"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let native_size = denoiser
            .as_ref()
            .and_then(|c| c.get("sample_size"))
            .and_then(Value::as_u64)
            .map(|s| s as u32 * vae_scale_factor)
            .unwrap_or(family.native_size());
        // The executor checks the weight files it needs (ONNX, diffusers or Neuron).
        let hash = weights_hash(root)?;
        Ok(Self {
            info: ModelInfo {
                id: id.to_string(),
                hash,
                root: root.to_path_buf(),
                family,
                class_name,
                latent_channels,
                vae_scale_factor,
                vae_scaling_factor,
                vae_shift_factor,
                native_size,
                guidance_embeds,
                scheduler_config,
                default_scheduler,
                force_zeros_for_empty_prompt,
            },
            tokenizers,
        })
    }

    /// The components an executor loads for this model.
    pub fn components(&self) -> Vec<Component> {
        self.info.family.components()
    }

    /// The tokenizer of text encoder `encoder`.
    pub fn tokenizer(&self, encoder: Component) -> Option<&PromptTokenizer> {
        self.tokenizers
            .iter()
            .find(|(c, _)| *c == encoder)
            .map(|(_, t)| t)
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::File {
        path: path.to_path_buf(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "missing; expected a diffusers/optimum ONNX Stable Diffusion folder".into()
        } else {
            e.to_string()
        },
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::File {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

fn optional_config(path: &Path) -> Result<Option<Value>, ModelError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// SHA-256 over every weight file of the ONNX components, in path order.
fn weights_hash(root: &Path) -> Result<String, ModelError> {
    let mut files = Vec::new();
    for component in [
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "unet",
        "transformer",
        "vae_decoder",
        "vae_encoder",
        "vae",
    ] {
        let dir = root.join(component);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if p.is_file() && !name.ends_with(".json") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for path in files {
        let mut f = std::fs::File::open(&path).map_err(|e| ModelError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        loop {
            let n = f.read(&mut buf).map_err(|e| ModelError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(5).map(|b| format!("{b:02x}")).collect())
}

/// A local folder, or a Hub repo id downloaded into hf-hub's cache (`HF_HOME`).
fn resolve(spec: &str) -> Result<PathBuf, ModelError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_repo =
        spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/');
    if !looks_like_repo {
        return Err(ModelError::NotFound(spec.to_string()));
    }
    download(spec)
}

fn download(id: &str) -> Result<PathBuf, ModelError> {
    let hub = |message: String| ModelError::Hub {
        id: id.to_string(),
        message,
    };
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| hub(e.to_string()))?;
    let repo = api.model(id.to_string());
    let info = repo.info().map_err(|e| hub(e.to_string()))?;
    let wanted = |f: &str| {
        f == "model_index.json"
            || [
                "scheduler/",
                "tokenizer/",
                "tokenizer_2/",
                "tokenizer_3/",
                "text_encoder/",
                "text_encoder_2/",
                "text_encoder_3/",
                "unet/",
                "transformer/",
                "vae_decoder/",
                "vae_encoder/",
            ]
            .iter()
            .any(|d| f.starts_with(d))
    };
    let files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| wanted(f))
        .collect();
    if !files
        .iter()
        .any(|f| f == "unet/model.onnx" || f == "transformer/model.onnx")
    {
        return Err(hub(
            "the repo has no unet/model.onnx or transformer/model.onnx; it is not in the ONNX \
             layout (export it with `optimum-cli export onnx --task text-to-image` or \
             `anyaccel compile`)"
                .into(),
        ));
    }
    let mut root = None;
    for f in &files {
        tracing::info!(file = %f, "fetching");
        let local = repo.get(f).map_err(|e| hub(format!("{f}: {e}")))?;
        if f == "model_index.json" {
            root = local.parent().map(Path::to_path_buf);
        }
    }
    root.ok_or_else(|| hub("the repo has no model_index.json".into()))
}
