//! Model families: what differs between Stable Diffusion generations, read
//! from a model's `model_index.json`. The denoising loop, schedulers, noise
//! and images are shared; a family says which components a model has, how
//! prompts become conditioning, what `guidance_scale` means, and which sizes
//! suit it.

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
    /// Stable Diffusion 3 and 3.5 (large, medium, large turbo): an MMDiT
    /// denoiser with flow matching; two CLIPs' penultimate layers padded to
    /// T5's width and joined with T5's sequence, both CLIPs' pooled vectors.
    #[serde(rename = "sd3")]
    StableDiffusion3,
    /// FLUX.1 (dev, schnell): a DiT on 2×2 latent patches with flow matching;
    /// CLIP's pooled vector and T5's sequence; dev takes its distilled
    /// guidance as an input instead of an unconditional pass.
    #[serde(rename = "flux")]
    Flux,
}

/// What a request's `guidance_scale` does in a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guidance {
    /// Classifier-free guidance: above 1, every image also runs an
    /// unconditional (negative-prompt) pass, mixed in by the scale.
    Classifier,
    /// Distilled guidance (FLUX.1-dev): the scale is an input of the
    /// transformer; one pass per image, no negative prompt.
    Distilled,
    /// No guidance (FLUX.1-schnell): the scale is ignored.
    None,
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
    ("StableDiffusion3Pipeline", ModelFamily::StableDiffusion3),
    (
        "StableDiffusion3Img2ImgPipeline",
        ModelFamily::StableDiffusion3,
    ),
    ("FluxPipeline", ModelFamily::Flux),
    ("FluxImg2ImgPipeline", ModelFamily::Flux),
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
        if family == ModelFamily::StableDiffusion3 && !has("text_encoder_3") {
            return Err(refuse(
                " (without text_encoder_3: SD3 is served with its T5 encoder)",
            ));
        }
        let denoiser = family.denoiser().folder();
        let in_channels = std::fs::read_to_string(root.join(denoiser).join("config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|c| c.get("in_channels").and_then(Value::as_u64));
        let expected = match family {
            ModelFamily::StableDiffusion | ModelFamily::StableDiffusionXl => 4,
            ModelFamily::StableDiffusion3 => 16,
            // 16 latent channels in 2×2 patches.
            ModelFamily::Flux => 64,
        };
        if let Some(n) = in_channels
            && n != expected
        {
            return Err(refuse(&format!(
                " (its {denoiser} takes {n} input channels, not {expected}; inpainting, Fill                  and other extended denoisers are not served)"
            )));
        }
        Ok(family)
    }

    /// The text encoders, in the order their outputs are joined.
    pub fn text_encoders(self) -> &'static [Component] {
        match self {
            ModelFamily::StableDiffusion => &[Component::TextEncoder],
            ModelFamily::StableDiffusionXl | ModelFamily::Flux => {
                &[Component::TextEncoder, Component::TextEncoder2]
            }
            ModelFamily::StableDiffusion3 => &[
                Component::TextEncoder,
                Component::TextEncoder2,
                Component::TextEncoder3,
            ],
        }
    }

    /// The T5 encoder, whose sequence length can be chosen.
    pub fn t5_encoder(self) -> Option<Component> {
        match self {
            ModelFamily::StableDiffusion3 => Some(Component::TextEncoder3),
            ModelFamily::Flux => Some(Component::TextEncoder2),
            _ => None,
        }
    }

    /// Which hidden layer of `encoder` conditions the denoiser.
    pub fn hidden_layer(self, encoder: Component) -> HiddenLayer {
        match (self, encoder) {
            (ModelFamily::StableDiffusionXl, _) => HiddenLayer::Penultimate,
            (ModelFamily::StableDiffusion3, c) if Some(c) != self.t5_encoder() => {
                HiddenLayer::Penultimate
            }
            _ => HiddenLayer::Last,
        }
    }

    /// The text encoders whose pooled embeddings, joined, condition the denoiser.
    pub fn pooled_from(self) -> &'static [Component] {
        match self {
            ModelFamily::StableDiffusion => &[],
            ModelFamily::StableDiffusionXl => &[Component::TextEncoder2],
            ModelFamily::StableDiffusion3 => &[Component::TextEncoder, Component::TextEncoder2],
            ModelFamily::Flux => &[Component::TextEncoder],
        }
    }

    /// The text encoders whose sequences condition the denoiser (Flux's CLIP
    /// gives only its pooled vector).
    pub fn sequence_from(self) -> &'static [Component] {
        match self {
            ModelFamily::Flux => &[Component::TextEncoder2],
            _ => self.text_encoders(),
        }
    }

    /// The denoiser: a UNet, or a diffusion transformer.
    pub fn denoiser(self) -> Component {
        match self {
            ModelFamily::StableDiffusion | ModelFamily::StableDiffusionXl => Component::Unet,
            ModelFamily::StableDiffusion3 | ModelFamily::Flux => Component::Transformer,
        }
    }

    /// Whether the family denoises by flow matching (a velocity per step).
    pub fn is_flow(self) -> bool {
        self.denoiser() == Component::Transformer
    }

    /// The schedulers a model of the family can run.
    pub fn schedulers(self) -> Vec<crate::SchedulerKind> {
        crate::SchedulerKind::ALL
            .into_iter()
            .filter(|k| k.is_flow() == self.is_flow())
            .collect()
    }

    /// What `guidance_scale` means; `guidance_embeds` is whether the
    /// transformer takes a guidance input (FLUX.1-dev, not schnell).
    pub fn guidance(self, guidance_embeds: bool) -> Guidance {
        match self {
            ModelFamily::Flux if guidance_embeds => Guidance::Distilled,
            ModelFamily::Flux => Guidance::None,
            _ => Guidance::Classifier,
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
            self.denoiser(),
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
            ModelFamily::StableDiffusionXl | ModelFamily::StableDiffusion3 | ModelFamily::Flux
                if native == 1024 =>
            {
                vec![
                    (1024, 1024),
                    (1152, 896),
                    (896, 1152),
                    (1216, 832),
                    (832, 1216),
                    (1344, 768),
                    (768, 1344),
                ]
            }
            _ => vec![(native, native)],
        }
    }

    pub const ALL: [ModelFamily; 4] = [
        ModelFamily::StableDiffusion,
        ModelFamily::StableDiffusionXl,
        ModelFamily::StableDiffusion3,
        ModelFamily::Flux,
    ];

    /// The family a short name (`sd`, `sdxl`) stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The resolution the family's base models were trained at.
    pub fn native_size(self) -> u32 {
        match self {
            ModelFamily::StableDiffusion => 512,
            _ => 1024,
        }
    }

    /// Pixels every side must be a multiple of: the VAE's 8, times the 2×2
    /// latent patches of the transformers.
    pub fn size_multiple(self) -> u32 {
        if self.is_flow() { 16 } else { 8 }
    }

    /// Whether a size suits the family: every VAE needs multiples of 8 (16
    /// for the transformers' patches), and SDXL draws broken images far below
    /// its one-megapixel training size.
    pub fn check_size(self, width: u32, height: u32) -> Result<(), String> {
        let side = 64..=2048;
        let m = self.size_multiple();
        if !width.is_multiple_of(m)
            || !height.is_multiple_of(m)
            || !side.contains(&width)
            || !side.contains(&height)
        {
            return Err(format!(
                "{width}x{height}: width and height must be multiples of {m} between 64 and 2048"
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
            ModelFamily::StableDiffusion3 => "sd3",
            ModelFamily::Flux => "flux",
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFamily::StableDiffusion => "SD 1.x/2.x",
            ModelFamily::StableDiffusionXl => "SDXL",
            ModelFamily::StableDiffusion3 => "SD3",
            ModelFamily::Flux => "FLUX.1",
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
            "StableDiffusion3ControlNetPipeline",
            "FluxFillPipeline",
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
    fn dit_families_are_detected_and_extended_ones_refused() {
        let dir = std::env::temp_dir().join(format!("anyaccel-family-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("transformer")).unwrap();
        let flux = json!({"_class_name": "FluxPipeline",
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"]});
        std::fs::write(
            dir.join("transformer/config.json"),
            r#"{"in_channels": 64}"#,
        )
        .unwrap();
        assert_eq!(ModelFamily::detect(&flux, &dir).unwrap(), ModelFamily::Flux);
        std::fs::write(
            dir.join("transformer/config.json"),
            r#"{"in_channels": 384}"#,
        )
        .unwrap();
        let e = ModelFamily::detect(&flux, &dir).unwrap_err().to_string();
        assert!(e.contains("384 input channels"), "{e}");
        let sd3 = json!({"_class_name": "StableDiffusion3Pipeline",
            "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "text_encoder_3": [null, null]});
        let e = ModelFamily::detect(&sd3, &dir).unwrap_err().to_string();
        assert!(e.contains("text_encoder_3"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ModelFamily::Flux.guidance(true), Guidance::Distilled);
        assert_eq!(ModelFamily::Flux.guidance(false), Guidance::None);
        assert_eq!(
            ModelFamily::StableDiffusion3.hidden_layer(Component::TextEncoder3),
            HiddenLayer::Last
        );
        assert_eq!(
            ModelFamily::StableDiffusion3.hidden_layer(Component::TextEncoder2),
            HiddenLayer::Penultimate
        );
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
        assert_eq!(ModelFamily::parse("flux"), Some(ModelFamily::Flux));
        assert_eq!(ModelFamily::parse("sd4"), None);
        assert!(ModelFamily::Flux.check_size(1024, 1024).is_ok());
        assert!(ModelFamily::Flux.check_size(1032, 1024).is_err());
        assert!(ModelFamily::StableDiffusion3.check_size(96, 64).is_ok());
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
