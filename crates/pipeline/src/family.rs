//! Model families: what differs between Stable Diffusion generations, read
//! from a model's `model_index.json`. The denoising loop, schedulers, noise
//! and images are shared; a family says which components a model has, how
//! prompts become conditioning, and which sizes suit it.

use std::fmt;
use std::path::Path;

use anyaccel_executor::{Component, HiddenLayer};
use serde::Serialize;
use serde_json::Value;

/// A generation of Stable Diffusion we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    /// SD 1.x and 2.x (incl. 2.x v-prediction and SD-Turbo): one CLIP encoder,
    /// last hidden layer, text-only conditioning.
    #[serde(rename = "sd")]
    StableDiffusion,
    /// SDXL (base, Turbo, Lightning/LCM-style fine-tunes): two CLIP encoders,
    /// penultimate layers concatenated, the second's pooled embedding and
    /// micro-conditioning `time_ids`.
    #[serde(rename = "sdxl")]
    StableDiffusionXl,
}

/// Pipeline classes (diffusers' names, with optimum's `ORT` prefix accepted)
/// and the family each is served as.
const SERVED: &[(&str, ModelFamily)] = &[
    ("StableDiffusionPipeline", ModelFamily::StableDiffusion),
    (
        "StableDiffusionImg2ImgPipeline",
        ModelFamily::StableDiffusion,
    ),
    (
        "LatentConsistencyModelPipeline",
        ModelFamily::StableDiffusion,
    ),
    ("StableDiffusionXLPipeline", ModelFamily::StableDiffusionXl),
    (
        "StableDiffusionXLImg2ImgPipeline",
        ModelFamily::StableDiffusionXl,
    ),
];

/// Why a model folder's pipeline cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{class} is not a pipeline anyaccel serves{detail}; supported: {}",
    supported().join(", ")
)]
pub struct UnsupportedPipeline {
    pub class: String,
    /// What about it is unsupported, when the class name alone does not say.
    pub detail: String,
}

/// The pipeline classes we load.
pub fn supported() -> Vec<&'static str> {
    SERVED.iter().map(|(c, _)| *c).collect()
}

impl ModelFamily {
    /// The family of a `model_index.json`, or why it is not served. `root` is
    /// the model folder, for the UNet's config (inpainting UNets take 9 channels).
    pub fn detect(index: &Value, root: &Path) -> Result<Self, UnsupportedPipeline> {
        let raw = index
            .get("_class_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let class = raw
            .strip_prefix("ORT")
            .or_else(|| raw.strip_prefix("Neuron"))
            .unwrap_or(raw);
        let refuse = |detail: &str| UnsupportedPipeline {
            class: raw.to_string(),
            detail: detail.to_string(),
        };
        let family = SERVED
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, f)| *f)
            .ok_or_else(|| refuse(""))?;
        let has = |name: &str| {
            index
                .get(name)
                .and_then(Value::as_array)
                .is_some_and(|a| a.first().is_some_and(|v| !v.is_null()))
        };
        if family == ModelFamily::StableDiffusionXl && !has("text_encoder") {
            return Err(refuse(
                " (an SDXL refiner: it has only text_encoder_2 and conditions on an aesthetic score)",
            ));
        }
        let in_channels = std::fs::read_to_string(root.join("unet/config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|c| c.get("in_channels").and_then(Value::as_u64));
        if let Some(n) = in_channels
            && n != 4
        {
            return Err(refuse(&format!(
                " (its UNet takes {n} input channels; inpainting and other extended UNets are not served)"
            )));
        }
        Ok(family)
    }

    /// The text encoders, in the order their outputs are concatenated.
    pub fn text_encoders(self) -> &'static [Component] {
        match self {
            ModelFamily::StableDiffusion => &[Component::TextEncoder],
            ModelFamily::StableDiffusionXl => &[Component::TextEncoder, Component::TextEncoder2],
        }
    }

    /// Which hidden layer conditions the denoiser.
    pub fn hidden_layer(self) -> HiddenLayer {
        match self {
            ModelFamily::StableDiffusion => HiddenLayer::Last,
            ModelFamily::StableDiffusionXl => HiddenLayer::Penultimate,
        }
    }

    /// The text encoder whose pooled embedding conditions the denoiser.
    pub fn pooled_from(self) -> Option<Component> {
        match self {
            ModelFamily::StableDiffusion => None,
            ModelFamily::StableDiffusionXl => Some(Component::TextEncoder2),
        }
    }

    /// Whether the denoiser takes micro-conditioning `time_ids`.
    pub fn has_time_ids(self) -> bool {
        self == ModelFamily::StableDiffusionXl
    }

    /// Every component a model of this family has (the VAE encoder is optional).
    pub fn components(self) -> Vec<Component> {
        let mut c = self.text_encoders().to_vec();
        c.extend([
            Component::Unet,
            Component::VaeDecoder,
            Component::VaeEncoder,
        ]);
        c
    }

    /// Sizes served when the operator names none: SDXL's training buckets
    /// around one megapixel, else the model's native square.
    pub fn default_sizes(self, native: u32) -> Vec<(u32, u32)> {
        match self {
            ModelFamily::StableDiffusion => vec![(native, native)],
            ModelFamily::StableDiffusionXl if native == 1024 => vec![
                (1024, 1024),
                (1152, 896),
                (896, 1152),
                (1216, 832),
                (832, 1216),
                (1344, 768),
                (768, 1344),
            ],
            ModelFamily::StableDiffusionXl => vec![(native, native)],
        }
    }

    pub const ALL: [ModelFamily; 2] =
        [ModelFamily::StableDiffusion, ModelFamily::StableDiffusionXl];

    /// The family a short name (`sd`, `sdxl`) stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The resolution the family's base models were trained at.
    pub fn native_size(self) -> u32 {
        match self {
            ModelFamily::StableDiffusion => 512,
            ModelFamily::StableDiffusionXl => 1024,
        }
    }

    /// Whether a size suits the family: every VAE needs multiples of 8, and
    /// SDXL draws broken images far below its one-megapixel training size.
    pub fn check_size(self, width: u32, height: u32) -> Result<(), String> {
        let side = 64..=2048;
        if !width.is_multiple_of(8)
            || !height.is_multiple_of(8)
            || !side.contains(&width)
            || !side.contains(&height)
        {
            return Err(format!(
                "{width}x{height}: width and height must be multiples of 8 between 64 and 2048"
            ));
        }
        if self == ModelFamily::StableDiffusionXl && (width as u64 * height as u64) < 512 * 512 {
            return Err(format!(
                "{width}x{height} is below 512x512 pixels, where SDXL models break down; \
                 SDXL is trained around 1024x1024"
            ));
        }
        Ok(())
    }

    /// Short, stable name (`sd`, `sdxl`) for APIs, metrics and manifests.
    pub fn name(self) -> &'static str {
        match self {
            ModelFamily::StableDiffusion => "sd",
            ModelFamily::StableDiffusionXl => "sdxl",
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFamily::StableDiffusion => "SD 1.x/2.x",
            ModelFamily::StableDiffusionXl => "SDXL",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detect(index: Value) -> Result<ModelFamily, UnsupportedPipeline> {
        ModelFamily::detect(&index, Path::new("/nonexistent"))
    }

    #[test]
    fn detects_served_classes() {
        let sd = json!({"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"]});
        assert_eq!(detect(sd).unwrap(), ModelFamily::StableDiffusion);
        let xl = json!({"_class_name": "ORTStableDiffusionXLPipeline",
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]});
        assert_eq!(detect(xl).unwrap(), ModelFamily::StableDiffusionXl);
    }

    #[test]
    fn refuses_with_class_and_supported_list() {
        for class in [
            "StableDiffusion3Pipeline",
            "FluxPipeline",
            "KandinskyPipeline",
            "",
        ] {
            let e = detect(json!({"_class_name": class})).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with(class), "{msg}");
            assert!(msg.contains("StableDiffusionXLPipeline"), "{msg}");
        }
        let refiner = json!({"_class_name": "StableDiffusionXLImg2ImgPipeline",
            "text_encoder": [null, null],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]});
        assert!(detect(refiner).unwrap_err().to_string().contains("refiner"));
    }

    #[test]
    fn sizes_are_checked_per_family() {
        assert!(ModelFamily::StableDiffusion.check_size(512, 512).is_ok());
        assert!(ModelFamily::StableDiffusion.check_size(256, 256).is_ok());
        assert!(ModelFamily::StableDiffusion.check_size(510, 512).is_err());
        assert!(ModelFamily::StableDiffusionXl.check_size(256, 256).is_err());
        assert!(ModelFamily::StableDiffusionXl.check_size(1216, 832).is_ok());
        assert_eq!(
            ModelFamily::parse("sdxl"),
            Some(ModelFamily::StableDiffusionXl)
        );
        assert_eq!(ModelFamily::parse("flux"), None);
    }

    #[test]
    fn sdxl_default_sizes_are_its_buckets() {
        let s = ModelFamily::StableDiffusionXl.default_sizes(1024);
        assert_eq!(s[0], (1024, 1024));
        assert!(s.iter().all(|(w, h)| w % 64 == 0 && h % 64 == 0));
        assert_eq!(
            ModelFamily::StableDiffusion.default_sizes(512),
            vec![(512, 512)]
        );
    }
}
