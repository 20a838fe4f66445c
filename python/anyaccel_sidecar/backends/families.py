"""Which diffusers pipelines the sidecar serves, read from a model's model_index.json.

The family decides which components a backend loads and what the denoiser is
conditioned on: SD 1.x/2.x and SDXL (UNets), SD3/3.5 and FLUX.1 (transformers).
Anything else is refused at load (Health FAILED with the reason), rather than
served with the wrong conditioning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import LoadError

SD_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
SDXL_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
SD3_CLASSES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")
FLUX_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline")
SUPPORTED = SD_CLASSES + SDXL_CLASSES + SD3_CLASSES + FLUX_CLASSES
CLIP_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
T5_CLASSES = ("T5EncoderModel",)
TEXT_ENCODER_CLASSES = CLIP_CLASSES + T5_CLASSES
# the prefixes optimum's ONNX Runtime and Neuron pipelines put before diffusers' class names
CLASS_PREFIXES = ("Neuron", "ORT")

# Why a well-known class is refused, so the message says more than "unsupported".
_INPAINT = "inpainting (a denoiser with mask and image channels) is not supported yet"
_REFUSED = {
    "StableDiffusionInpaintPipeline": "inpainting (a 9-channel UNet) is not supported yet",
    "StableDiffusionXLInpaintPipeline": "inpainting (a 9-channel UNet) is not supported yet",
    "StableDiffusion3InpaintPipeline": _INPAINT,
    "FluxInpaintPipeline": _INPAINT,
    "FluxFillPipeline": "FLUX.1 Fill (inpainting/outpainting, a 384-channel transformer input) is not supported yet",
    "FluxKontextPipeline": "FLUX.1 Kontext (image editing: reference-image tokens in the sequence) is not supported yet",
    "FluxKontextInpaintPipeline": "FLUX.1 Kontext (image editing: reference-image tokens in the sequence) is not supported yet",
    "FluxControlPipeline": "FLUX.1 Control (Canny/Depth: control latents as extra input channels) is not supported yet",
    "FluxControlImg2ImgPipeline": "FLUX.1 Control (control latents as extra input channels) is not supported yet",
    "FluxControlInpaintPipeline": "FLUX.1 Control (control latents as extra input channels) is not supported yet",
    "FluxPriorReduxPipeline": "FLUX.1 Redux (an image-prompt prior, not a denoising pipeline) is not supported",
    "LatentConsistencyModelPipeline": "LCM-distilled UNets (timestep_cond) are not supported",
}

# per family: the text encoder slots (required ones first) and the classes each may hold
_ENCODERS = {
    "sd": {"text_encoder": CLIP_CLASSES},
    "sdxl": {"text_encoder": CLIP_CLASSES, "text_encoder_2": CLIP_CLASSES},
    "sd3": {"text_encoder": CLIP_CLASSES, "text_encoder_2": CLIP_CLASSES, "text_encoder_3": T5_CLASSES},
    "flux": {"text_encoder": CLIP_CLASSES, "text_encoder_2": T5_CLASSES},
}
_DENOISERS = {
    "sd": ("unet", "UNet2DConditionModel"),
    "sdxl": ("unet", "UNet2DConditionModel"),
    "sd3": ("transformer", "SD3Transformer2DModel"),
    "flux": ("transformer", "FluxTransformer2DModel"),
}


@dataclass(frozen=True)
class Family:
    name: str  # "sd" (1.x/2.x), "sdxl", "sd3" (3.x) or "flux" (FLUX.1)
    pipeline_class: str  # as model_index.json names it, without optimum's "Neuron"/"ORT" prefix
    text_encoders: tuple[str, ...]
    # the denoiser's component name: "unet" (SD, SDXL) or "transformer" (SD3, Flux)
    denoiser: str = "unet"

    @property
    def sdxl(self) -> bool:
        return self.name == "sdxl"

    @property
    def transformer(self) -> bool:
        """A diffusion transformer (SD3, Flux) rather than a UNet."""
        return self.denoiser == "transformer"

    @property
    def packed(self) -> bool:
        """Flux: the denoiser takes latents packed into 2x2 patches, [rows, tokens, 4 * channels]."""
        return self.name == "flux"


def present(index: dict, name: str) -> bool:
    """Whether model_index.json lists component `name` (absent ones are [null, null])."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def base_class(raw: str) -> str:
    """diffusers' class name for optimum's ORT*/Neuron* pipeline classes."""
    for prefix in CLASS_PREFIXES:
        rest = raw[len(prefix):]
        if raw.startswith(prefix) and rest[:1].isupper():
            return rest
    return raw


def family_name(cls: str) -> str | None:
    for name, classes in (("sd", SD_CLASSES), ("sdxl", SDXL_CLASSES), ("sd3", SD3_CLASSES), ("flux", FLUX_CLASSES)):
        if cls in classes:
            return name
    return None


def denoiser_name(index: dict) -> str:
    """The folder of a pipeline's denoiser: transformer/ for DiT pipelines, else unet/."""
    return "transformer" if present(index, "transformer") or base_class(str(index.get("_class_name") or "")) in SD3_CLASSES + FLUX_CLASSES else "unet"


def _why_refused(cls: str) -> str:
    if cls in _REFUSED:
        return _REFUSED[cls]
    if "ControlNet" in cls:
        return "ControlNet pipelines are not supported yet"
    if "Inpaint" in cls or "Fill" in cls:
        return _INPAINT
    if "Kontext" in cls:
        return "FLUX.1 Kontext (image editing) is not supported yet"
    return "not a pipeline this sidecar knows"


def _kind(index: dict, name: str):
    entry = index.get(name)
    return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else entry


def detect(index: dict, model: str, denoiser_config: dict | None = None, vae_config: dict | None = None) -> Family:
    """The family of a pipeline, or LoadError naming the class and what is supported.
    `denoiser_config` is unet/config.json (SD, SDXL) or transformer/config.json (SD3,
    Flux); `vae_config` (vae/ or vae_decoder/config.json) checks the latent channels."""
    raw = str(index.get("_class_name") or "")
    cls = base_class(raw)
    supported = ", ".join(SUPPORTED)
    name = family_name(cls)
    if name is None:
        raise LoadError(f"{model}: {raw or 'a pipeline without _class_name'} is not supported: {_why_refused(cls)} (supported: {supported})")
    sdxl = name == "sdxl"
    if not present(index, "text_encoder"):
        what = "the SDXL refiner (text_encoder_2 only)" if sdxl else "a pipeline without a text_encoder"
        raise LoadError(f"{model}: {cls} without text_encoder is {what}, which is not supported (supported: {supported})")
    slots = _ENCODERS[name]
    if sdxl and not present(index, "text_encoder_2"):
        raise LoadError(f"{model}: {cls} without text_encoder_2; SDXL needs both CLIP text encoders")
    if name == "sd" and present(index, "text_encoder_2"):
        raise LoadError(f"{model}: {cls} lists a text_encoder_2, which SD 1.x/2.x pipelines do not have")
    if name == "sd3" and not present(index, "text_encoder_2"):
        raise LoadError(f"{model}: {cls} without text_encoder_2; SD3 needs both CLIP text encoders")
    if name == "flux" and not present(index, "text_encoder_2"):
        raise LoadError(f"{model}: {cls} without text_encoder_2; Flux needs its T5 encoder")
    # SD3 may leave out its T5 (text_encoder_3): diffusers then conditions on zeros in its place
    encoders = tuple(n for n in slots if present(index, n))
    for enc in encoders:
        kind = _kind(index, enc)
        # a compiled (Neuron) index may not name transformers classes; check those it does
        if isinstance(kind, str) and kind not in slots[enc] and not kind.startswith("Neuron"):
            raise LoadError(f"{model}: {enc} of {cls} is a {kind}; the sidecar runs {' or '.join(slots[enc])} there")
    denoiser, denoiser_cls = _DENOISERS[name]
    other = "unet" if denoiser == "transformer" else "transformer"
    if present(index, other) and not present(index, denoiser):
        raise LoadError(f"{model}: {cls} with a {other} instead of a {denoiser} is not a layout the sidecar knows")
    kind = _kind(index, denoiser)
    if isinstance(kind, str) and kind != denoiser_cls and not kind.startswith("Neuron"):
        raise LoadError(f"{model}: the {denoiser} of {cls} is a {kind}; the sidecar runs {denoiser_cls}")
    if denoiser_config is not None:
        if name in ("sd", "sdxl"):
            _check_unet(denoiser_config, model, cls, sdxl)
        else:
            _check_transformer(denoiser_config, vae_config, model, cls, name)
    return Family(name, cls, encoders, denoiser)


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


def _check_transformer(cfg: dict, vae: dict | None, model: str, cls: str, name: str) -> None:
    channels = int(cfg.get("in_channels", 16 if name == "sd3" else 64))
    latent = int((vae or {}).get("latent_channels", 16))
    if name == "sd3":
        # SD3's transformer patchifies the latents itself: it takes the VAE's channels
        if channels > 16 or channels != latent:
            raise LoadError(
                f"{model}: {cls} has a transformer with {channels} input channels for a {latent}-channel VAE "
                "(inpainting or control channels); only plain text-to-image SD3 transformers are supported"
            )
    else:
        # Flux takes 2x2 patches of the latents: 4 * latent channels (Fill and Control add more)
        if channels != 4 * latent:
            raise LoadError(
                f"{model}: {cls} has a transformer with {channels} input channels for a {latent}-channel VAE "
                f"(expected {4 * latent}: FLUX.1 Fill/Control add image or control channels), which is not supported"
            )
        out = cfg.get("out_channels")
        if out is not None and int(out) != channels:
            raise LoadError(f"{model}: {cls} has a transformer with {channels} input but {out} output channels")


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoadError(f"{path}: unreadable JSON: {e}") from e
