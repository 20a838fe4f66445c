"""Family detection from model_index.json (and the denoiser's and VAE's configs):
SD, SDXL, SD3 and Flux, optimum's ORT*/Neuron* class names, and the refusals."""

import pytest

from anyaccel_sidecar.backends import families
from anyaccel_sidecar.errors import LoadError

CLIP, CLIPP, T5 = ["transformers", "CLIPTextModel"], ["transformers", "CLIPTextModelWithProjection"], ["transformers", "T5EncoderModel"]
NONE = [None, None]


def sd3(cls="StableDiffusion3Pipeline", **parts):
    return {"_class_name": cls, "text_encoder": CLIPP, "text_encoder_2": CLIPP, "text_encoder_3": T5,
            "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]} | parts


def flux(cls="FluxPipeline", **parts):
    return {"_class_name": cls, "text_encoder": CLIP, "text_encoder_2": T5,
            "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]} | parts


VAE = {"latent_channels": 16}


@pytest.mark.parametrize("cls", ["StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "ORTStableDiffusion3Pipeline"])
def test_sd3(cls):
    f = families.detect(sd3(cls), "m", {"in_channels": 16}, VAE)
    assert (f.name, f.pipeline_class, f.denoiser) == ("sd3", cls.removeprefix("ORT"), "transformer")
    assert f.text_encoders == ("text_encoder", "text_encoder_2", "text_encoder_3") and f.transformer and not f.packed
    assert families.denoiser_name(sd3(cls)) == "transformer"
    # SD3 without its T5: diffusers conditions on zeros in its place; the encoder is not listed
    assert families.detect(sd3(cls, text_encoder_3=NONE), "m").text_encoders == ("text_encoder", "text_encoder_2")


@pytest.mark.parametrize("cls", ["FluxPipeline", "FluxImg2ImgPipeline", "ORTFluxPipeline", "NeuronFluxPipeline"])
def test_flux(cls):
    f = families.detect(flux(cls), "m", {"in_channels": 64, "guidance_embeds": True}, VAE)
    assert (f.name, f.denoiser, f.text_encoders) == ("flux", "transformer", ("text_encoder", "text_encoder_2"))
    assert f.packed and f.pipeline_class == cls.removeprefix("ORT").removeprefix("Neuron")


def test_unet_families_are_unchanged():
    index = {"_class_name": "ORTStableDiffusionXLPipeline", "text_encoder": CLIP, "text_encoder_2": CLIPP,
             "unet": ["diffusers", "UNet2DConditionModel"]}
    f = families.detect(index, "m", {"in_channels": 4, "addition_embed_type": "text_time"})
    assert (f.name, f.denoiser, f.pipeline_class) == ("sdxl", "unet", "StableDiffusionXLPipeline") and not f.transformer
    assert families.denoiser_name(index) == "unet"


@pytest.mark.parametrize(
    "cls, why",
    [
        ("FluxFillPipeline", "FLUX.1 Fill"),
        ("FluxKontextPipeline", "Kontext"),
        ("NeuronFluxKontextPipeline", "Kontext"),
        ("FluxControlPipeline", "FLUX.1 Control"),
        ("FluxControlNetPipeline", "ControlNet pipelines are not supported"),
        ("StableDiffusion3ControlNetPipeline", "ControlNet pipelines are not supported"),
        ("StableDiffusion3InpaintPipeline", "inpainting"),
        ("FluxInpaintPipeline", "inpainting"),
        ("HunyuanDiTPipeline", "not a pipeline this sidecar knows"),
    ],
)
def test_unsupported_pipelines_name_their_class_and_the_supported_list(cls, why):
    with pytest.raises(LoadError) as e:
        families.detect(flux(cls), "m")
    msg = str(e.value)
    assert f"{cls} is not supported: " in msg and why in msg
    assert "supported: StableDiffusionPipeline" in msg and "StableDiffusion3Pipeline" in msg and "FluxPipeline" in msg


def test_transformer_channels_are_checked():
    with pytest.raises(LoadError, match="384 input channels for a 16-channel VAE \\(expected 64"):
        families.detect(flux(), "m", {"in_channels": 384}, VAE)  # Fill weights under FluxPipeline's name
    with pytest.raises(LoadError, match="input but 128 output channels"):
        families.detect(flux(), "m", {"in_channels": 64, "out_channels": 128}, VAE)
    with pytest.raises(LoadError, match="33 input channels for a 16-channel VAE"):
        families.detect(sd3(), "m", {"in_channels": 33}, VAE)
    # a 4-channel SD3-style toy: channels follow its VAE
    assert families.detect(sd3(), "m", {"in_channels": 4}, {"latent_channels": 4}).name == "sd3"


def test_components_are_checked():
    with pytest.raises(LoadError, match="text_encoder_2 of FluxPipeline is a CLIPTextModel; the sidecar runs T5EncoderModel"):
        families.detect(flux(text_encoder_2=CLIP), "m")
    with pytest.raises(LoadError, match="text_encoder_3 of StableDiffusion3Pipeline is a CLIPTextModel"):
        families.detect(sd3(text_encoder_3=CLIP), "m")
    with pytest.raises(LoadError, match="Flux needs its T5 encoder"):
        families.detect(flux(text_encoder_2=NONE), "m")
    with pytest.raises(LoadError, match="SD3 needs both CLIP text encoders"):
        families.detect(sd3(text_encoder_2=NONE), "m")
    with pytest.raises(LoadError, match="the transformer of FluxPipeline is a SD3Transformer2DModel"):
        families.detect(flux(transformer=["diffusers", "SD3Transformer2DModel"]), "m")
    with pytest.raises(LoadError, match="with a unet instead of a transformer"):
        families.detect(flux(transformer=NONE, unet=["diffusers", "UNet2DConditionModel"]), "m")
