"""Which diffusers pipelines the sidecar serves, read from a model's model_index.json.

The family decides which components a backend loads and what the UNet is
conditioned on. Anything else is refused at load (Health FAILED with the reason),
rather than served with the wrong conditioning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoadError

SD_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
SDXL_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
SUPPORTED = SD_CLASSES + SDXL_CLASSES
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")

# Why a well-known class is refused, so the message says more than "unsupported".
_REFUSED = {
    "StableDiffusionInpaintPipeline": "inpainting (a 9-channel UNet) is not supported yet",
    "StableDiffusionXLInpaintPipeline": "inpainting (a 9-channel UNet) is not supported yet",
    "StableDiffusion3Pipeline": "SD3 (a transformer denoiser with a T5 encoder) is not supported yet",
    "StableDiffusion3Img2ImgPipeline": "SD3 (a transformer denoiser with a T5 encoder) is not supported yet",
    "FluxPipeline": "Flux (a transformer denoiser with a T5 encoder) is not supported yet",
    "FluxImg2ImgPipeline": "Flux (a transformer denoiser with a T5 encoder) is not supported yet",
    "LatentConsistencyModelPipeline": "LCM-distilled UNets (timestep_cond) are not supported",
}


@dataclass(frozen=True)
class Family:
    name: str  # "sd" (1.x/2.x) or "sdxl"
    pipeline_class: str  # as model_index.json names it, without optimum-neuron's "Neuron" prefix
    text_encoders: tuple[str, ...]

    @property
    def sdxl(self) -> bool:
        return self.name == "sdxl"


def present(index: dict, name: str) -> bool:
    """Whether model_index.json lists component `name` (absent ones are [null, null])."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def detect(index: dict, model: str, unet_config: dict | None = None) -> Family:
    """The family of a pipeline, or LoadError naming the class and what is supported."""
    raw = str(index.get("_class_name") or "")
    # optimum-neuron's compiled layouts may name their own classes (NeuronStableDiffusion...)
    cls = raw[len("Neuron"):] if raw.startswith("Neuron") else raw
    supported = ", ".join(SUPPORTED)
    if cls not in SUPPORTED:
        why = _REFUSED.get(cls, "not a pipeline this sidecar knows")
        raise LoadError(f"{model}: {raw or 'a pipeline without _class_name'} is not supported: {why} (supported: {supported})")
    sdxl = cls in SDXL_CLASSES
    if not present(index, "text_encoder"):
        what = "the SDXL refiner (text_encoder_2 only)" if sdxl else "a pipeline without a text_encoder"
        raise LoadError(f"{model}: {cls} without text_encoder is {what}, which is not supported (supported: {supported})")
    encoders = ("text_encoder", "text_encoder_2") if sdxl else ("text_encoder",)
    if sdxl and not present(index, "text_encoder_2"):
        raise LoadError(f"{model}: {cls} without text_encoder_2; SDXL needs both CLIP text encoders")
    if not sdxl and present(index, "text_encoder_2"):
        raise LoadError(f"{model}: {cls} lists a text_encoder_2, which SD 1.x/2.x pipelines do not have")
    for name in encoders:
        entry = index.get(name)
        kind = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else entry
        # a compiled (Neuron) index may not name transformers classes; check those it does
        if isinstance(kind, str) and kind not in TEXT_ENCODER_CLASSES and not kind.startswith("Neuron"):
            raise LoadError(f"{model}: {name} is a {kind}; the sidecar runs {' and '.join(TEXT_ENCODER_CLASSES)}")
    if unet_config is not None:
        _check_unet(unet_config, model, cls, sdxl)
    return Family("sdxl" if sdxl else "sd", cls, encoders)


def _check_unet(cfg: dict, model: str, cls: str, sdxl: bool) -> None:
    channels = cfg.get("in_channels", 4)
    if channels != 4:
        kind = "an inpainting UNet" if channels == 9 else "a UNet with extra input channels"
        raise LoadError(f"{model}: {cls} has {kind} ({channels} input channels); only 4-channel UNets are supported")
    if cfg.get("time_cond_proj_dim") is not None:
        raise LoadError(f"{model}: the UNet takes timestep_cond (an LCM-distilled UNet), which is not supported")
    extra = cfg.get("addition_embed_type")
    if sdxl and extra != "text_time":
        raise LoadError(f"{model}: {cls} with a UNet whose addition_embed_type is {extra!r}, not 'text_time'")
    if not sdxl and extra is not None:
        raise LoadError(f"{model}: {cls} with a UNet conditioned on {extra!r}, which SD 1.x/2.x UNets are not")
    if cfg.get("class_embed_type") is not None:
        raise LoadError(f"{model}: the UNet takes class labels ({cfg['class_embed_type']}), which is not supported")


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoadError(f"{path}: unreadable JSON: {e}") from e
