"""The neuron backend's bookkeeping against a stand-in for optimum-neuron.

No Neuron SDK here: the fake pipelines mimic what optimum-neuron 0.4.5's
NeuronStableDiffusionPipeline, NeuronStableDiffusionXLPipeline and NeuronFluxPipeline
expose, as read from its source (modeling_diffusion.py, exporters/neuron): components
with `config.neuron`, their call signatures, ModelOutput-like dicts keyed by the
exported output names (`hidden_states` only when compiled with output_hidden_states),
Flux's T5 returning `[last_hidden_state]`, the UNet's `timestep.float().expand((batch,))`
and `added_cond_kwargs`, NeuronModelTransformer's keyword arguments (it concatenates
txt_ids and img_ids for the rotary embedding), and `data_parallel_mode`. It checks this backend's logic, not the SDK;
docs/inferentia.md says what needs real hardware.
"""

import json
import sys
from pathlib import Path
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anyaccel_sidecar.backends.base import Conditioning
from anyaccel_sidecar.errors import BadRequest, ComponentMissing, LoadError

LATENT = {"static_height": 8, "static_width": 12}


class Part:
    def __init__(self, batch, fn, hidden_states=False, **neuron):
        self.config = SimpleNamespace(neuron={"static_batch_size": batch, **neuron}, output_hidden_states=hidden_states)
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def text_encoder(dim, pooled_name, hidden_states, layers=3):
    """A CLIP text encoder whose layer i holds the value i (the last is 10 * layers)."""

    def run(ids, output_hidden_states=None):
        if output_hidden_states:
            assert hidden_states, "optimum-neuron asserts the model was compiled with hidden_states"
        b, n = ids.shape
        out = {
            "last_hidden_state": torch.full((b, n, dim), 10.0 * layers),
            pooled_name: torch.full((b, dim), -1.0),
        }
        if hidden_states:
            out["hidden_states"] = tuple(torch.full((b, n, dim), float(i)) for i in range(layers + 1))
        return out

    return run


def unet(s, t, h, added_cond_kwargs=None):
    t = t.float().expand((s.shape[0],))  # as NeuronModelUnet.forward does
    out = s * 0 + t.view(-1, 1, 1, 1) + h.mean(dim=(1, 2)).view(-1, 1, 1, 1)
    if added_cond_kwargs:
        extra = added_cond_kwargs["text_embeds"].sum(dim=1) + added_cond_kwargs["time_ids"].sum(dim=1)
        out = out + extra.view(-1, 1, 1, 1)
    return (out,)


def vae_decoder():
    return Part(1, lambda z: SimpleNamespace(sample=torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8)), **LATENT)


class FakeSD:
    vae_scale_factor = 8
    data_parallel_mode = "unet"

    def __init__(self):
        self.text_encoder = Part(1, text_encoder(4, "pooler_output", False), static_sequence_length=77)
        self.text_encoder_2 = None
        self.unet = Part(1, unet, auto_cast="matmul", auto_cast_type="bf16", float_dtype="fp32", **LATENT)
        self.vae_decoder = vae_decoder()
        self.vae_encoder = None

    @classmethod
    def from_pretrained(cls, model):
        return cls()


class FakeSDXL(FakeSD):
    data_parallel_mode = "none"

    def __init__(self):
        super().__init__()
        self.text_encoder = Part(2, text_encoder(4, "pooler_output", True), hidden_states=True, static_sequence_length=77)
        self.text_encoder_2 = Part(2, text_encoder(6, "text_embeds", True), hidden_states=True, static_sequence_length=77)
        self.unet = Part(2, unet, auto_cast="none", float_dtype="bf16", **LATENT)
        self.vae_encoder = Part(
            2, lambda x: SimpleNamespace(latent_dist=SimpleNamespace(parameters=torch.zeros(x.shape[0], 8, x.shape[2] // 8, x.shape[3] // 8))), **LATENT
        )


def compiled(tmp_path, cls, unet_cfg):
    """A compiled folder's configs (what the backend reads before optimum-neuron loads)."""
    sdxl = "XL" in cls
    index = {
        "_class_name": cls,
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"] if sdxl else [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"in_channels": 4, **unet_cfg}))
    return str(tmp_path)


@pytest.fixture
def neuron(monkeypatch):
    import optimum

    fake = types.ModuleType("optimum.neuron")
    fake.__version__ = "0.4.5-fake"
    fake.NeuronStableDiffusionPipeline = FakeSD
    fake.NeuronStableDiffusionXLPipeline = FakeSDXL
    monkeypatch.setitem(sys.modules, "optimum.neuron", fake)
    monkeypatch.setattr(optimum, "neuron", fake, raising=False)
    from anyaccel_sidecar.backends.neuron_backend import NeuronBackend

    return NeuronBackend


@pytest.fixture
def backend(neuron, tmp_path):
    return neuron(compiled(tmp_path, "StableDiffusionPipeline", {}))


@pytest.fixture
def xl(neuron, tmp_path):
    return neuron(compiled(tmp_path, "StableDiffusionXLPipeline", {"addition_embed_type": "text_time"}))


def test_capabilities_report_the_compiled_shapes(backend):
    c = backend.capabilities()
    assert c.static_shapes and c.device == "neuron" and c.dtype == "bf16"
    assert c.sizes == [(96, 64)], "static_width/height are latent cells"
    assert c.batch_size == 1
    # data_parallel_mode "unet": the UNet spans both cores, taking the CFG pair
    assert c.component_batches == {"text_encoder": 1, "unet": 2, "vae_decoder": 1}
    assert not c.vae_encoder and c.max_text_len == 77
    assert c.per_sample_timesteps, "the UNet was traced with a [batch] timestep"
    assert c.components == ["text_encoder", "unet", "vae_decoder"]
    assert c.pipeline_class == "StableDiffusionPipeline"


def test_calls_use_the_compiled_batch(backend):
    hidden = np.zeros((2, 77, 4), np.float32)
    session = backend.begin_denoise(Conditioning(hidden))
    out = backend.denoise_step(session, np.zeros((2, 4, 8, 12), np.float32), np.array([501.0, 21.0], np.float32))
    assert out.shape == (2, 4, 8, 12) and np.all(out[0] == 501.0) and np.all(out[1] == 21.0)
    assert backend.end_denoise(session)
    enc = backend.encode_text("text_encoder", np.zeros((1, 77), np.int64), "last")
    assert enc.hidden.shape == (1, 77, 4) and enc.pooled.shape == (1, 4)
    assert backend.vae_decode(np.zeros((1, 4, 8, 12), np.float32)).shape == (1, 3, 64, 96)
    with pytest.raises(BadRequest, match="compiled for batch 2"):
        backend.begin_denoise(Conditioning(hidden[:1]))
    with pytest.raises(BadRequest, match="compiled for 96x64"):
        backend.vae_decode(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(BadRequest, match="compiled for 77"):
        backend.encode_text("text_encoder", np.zeros((1, 10), np.int64), "last")


def test_missing_parts_are_reported(backend):
    with pytest.raises(ComponentMissing, match="img2img"):
        backend.vae_encode(np.zeros((1, 3, 64, 96), np.float32))
    with pytest.raises(ComponentMissing, match="output_hidden_states"):
        backend.encode_text("text_encoder", np.zeros((1, 77), np.int64), "penultimate")
    with pytest.raises(ComponentMissing, match="text_encoder_2"):
        backend.encode_text("text_encoder_2", np.zeros((1, 77), np.int64), "last")


def test_sdxl_encoders_layers_and_added_conditioning(xl):
    c = xl.capabilities()
    assert c.pipeline_class == "StableDiffusionXLPipeline" and c.dtype == "bf16" and c.vae_encoder
    assert c.component_batches == {"text_encoder": 2, "text_encoder_2": 2, "unet": 2, "vae_decoder": 1, "vae_encoder": 2}
    assert c.components == ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]
    ids = np.zeros((2, 77), np.int64)
    first = xl.encode_text("text_encoder", ids, "penultimate")
    second = xl.encode_text("text_encoder_2", ids, "penultimate")
    # hidden_states[-2]: layer 2 of 3 (index 0 is the embeddings)
    assert first.hidden.shape == (2, 77, 4) and np.all(first.hidden == 2.0)
    assert second.hidden.shape == (2, 77, 6) and np.all(second.hidden == 2.0)
    assert second.pooled.shape == (2, 6), "text_embeds of CLIPTextModelWithProjection"
    assert np.all(xl.encode_text("text_encoder_2", ids, "last").hidden == 30.0)

    hidden = np.zeros((2, 77, 10), np.float32)
    pooled = np.ones((2, 6), np.float32)
    time_ids = np.array([[64, 64, 0, 0, 64, 64], [1, 1, 0, 0, 1, 1]], np.float32)
    with pytest.raises(BadRequest, match="needs `pooled`"):
        xl.begin_denoise(Conditioning(hidden))
    session = xl.begin_denoise(Conditioning(hidden, pooled, time_ids))
    out = xl.denoise_step(session, np.zeros((2, 4, 8, 12), np.float32), np.array([10.0, 10.0], np.float32))
    # the fake UNet adds t, the text_embeds and time_ids sums: both reach it per row
    assert np.all(out[0] == 10 + 6 + 256) and np.all(out[1] == 10 + 6 + 4)


def test_unsupported_compiled_pipelines_are_refused(neuron, tmp_path):
    with pytest.raises(LoadError, match="NeuronFluxKontextPipeline is not supported: FLUX.1 Kontext"):
        neuron(compiled(tmp_path, "NeuronFluxKontextPipeline", {}))


def t5_encoder(dim):
    """Flux's compiled T5 (NeuronModelTextEncoder of a t5 model): [last_hidden_state]."""

    def run(ids, output_hidden_states=None):
        return [torch.full((ids.shape[0], ids.shape[1], dim), 7.0)]

    return run


def flux_transformer(hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                     img_ids=None, txt_ids=None, guidance=None, return_dict=True):
    """NeuronModelTransformer.forward's keywords; the ids concatenated as it does."""
    ids = torch.cat((txt_ids, img_ids), dim=0)
    out = hidden_states * 0 + timestep.view(-1, 1, 1) + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1)
    out = out + pooled_projections.sum(dim=1).view(-1, 1, 1) + ids.shape[0]
    if guidance is not None:
        out = out + 100 * guidance.view(-1, 1, 1)
    return out if return_dict else (out,)


class FakeFlux:
    vae_scale_factor = 8
    data_parallel_mode = "none"  # a tensor-parallel transformer is not data parallel

    def __init__(self, guidance=True):
        self.text_encoder = Part(1, text_encoder(4, "pooler_output", False), static_sequence_length=77)
        self.text_encoder_2 = Part(1, t5_encoder(6), static_sequence_length=256)
        self.transformer = Part(1, flux_transformer, float_dtype="bf16", auto_cast="none", static_sequence_length=256, **LATENT)
        self.transformer.config.guidance_embeds = guidance
        self.vae_decoder = vae_decoder()
        self.vae_encoder = None

    @classmethod
    def from_pretrained(cls, model):
        return cls(guidance=json.loads((Path(model) / "transformer" / "config.json").read_text())["guidance_embeds"])


class FakeFluxDataParallel(FakeFlux):
    data_parallel_mode = "transformer"


def flux_compiled(tmp_path, guidance=True, cls="NeuronFluxPipeline"):
    index = {
        "_class_name": cls,
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
    }
    for part in ("transformer", "vae_decoder"):
        (tmp_path / part).mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"in_channels": 64, "guidance_embeds": guidance}))
    (tmp_path / "vae_decoder" / "config.json").write_text(json.dumps({"latent_channels": 16}))
    return str(tmp_path)


@pytest.fixture
def flux(neuron, monkeypatch):
    import optimum

    optimum.neuron.NeuronFluxPipeline = FakeFlux
    return neuron


def flux_cond(rows=1, tokens=24, guidance=True):
    return Conditioning(
        np.ones((rows, 256, 6), np.float32),
        pooled=np.ones((rows, 4), np.float32),
        guidance=np.full(rows, 3.5, np.float32) if guidance else None,
        txt_ids=np.zeros((256, 3), np.float32),
        img_ids=np.zeros((tokens, 3), np.float32),
    )


def test_flux_capabilities_encoders_and_transformer(flux, tmp_path):
    backend = flux(flux_compiled(tmp_path))
    c = backend.capabilities()
    assert c.pipeline_class == "FluxPipeline" and c.per_sample_timesteps and c.dtype == "bf16"
    assert c.components == ["text_encoder", "text_encoder_2", "transformer", "vae_decoder"]
    assert c.component_batches == {"text_encoder": 1, "text_encoder_2": 1, "transformer": 1, "vae_decoder": 1}
    assert c.sizes == [(96, 64)] and c.max_text_len == 77
    t5 = backend.encode_text("text_encoder_2", np.zeros((1, 256), np.int64), "last")
    assert t5.hidden.shape == (1, 256, 6) and np.all(t5.hidden == 7.0) and t5.pooled is None
    with pytest.raises(BadRequest, match="text_encoder_2 was compiled for 256"):
        backend.encode_text("text_encoder_2", np.zeros((1, 77), np.int64), "last")
    with pytest.raises(ComponentMissing, match="output_hidden_states"):
        backend.encode_text("text_encoder_2", np.zeros((1, 256), np.int64), "penultimate")
    assert backend.encode_text("text_encoder", np.zeros((1, 77), np.int64), "last").pooled.shape == (1, 4)

    session = backend.begin_denoise(flux_cond())
    out = backend.denoise_step(session, np.zeros((1, 24, 64), np.float32), np.array([0.25], np.float32))
    # t + mean(hidden) + sum(pooled) + (256 + 24) position ids + 100 * guidance
    assert out.shape == (1, 24, 64) and np.allclose(out, 0.25 + 1 + 4 + 280 + 350)
    with pytest.raises(BadRequest, match="packed latents"):
        backend.denoise_step(session, np.zeros((1, 16, 8, 12), np.float32), np.array([0.25], np.float32))
    assert backend.end_denoise(session)
    with pytest.raises(BadRequest, match="compiled for 96x64 \\(24 tokens\\)"):
        backend.begin_denoise(flux_cond(tokens=16))
    with pytest.raises(BadRequest, match="needs `guidance`"):
        backend.begin_denoise(flux_cond(guidance=False))
    short = flux_cond()
    short.encoder_hidden_states, short.txt_ids = short.encoder_hidden_states[:, :77], short.txt_ids[:77]
    with pytest.raises(BadRequest, match="77 tokens, the transformer was compiled for 256"):
        backend.begin_denoise(short)
    with pytest.raises(BadRequest, match="compiled for batch 1"):
        backend.begin_denoise(flux_cond(rows=2))
    assert backend.vae_decode(np.zeros((1, 16, 8, 12), np.float32)).shape == (1, 3, 64, 96)


def test_flux_schnell_and_data_parallel(flux, tmp_path, monkeypatch):
    import optimum

    (tmp_path / "s").mkdir()
    (tmp_path / "d").mkdir()
    schnell = flux(flux_compiled(tmp_path / "s", guidance=False))
    with pytest.raises(BadRequest, match="no guidance embedding"):
        schnell.begin_denoise(flux_cond())
    session = schnell.begin_denoise(flux_cond(guidance=False))
    out = schnell.denoise_step(session, np.zeros((1, 24, 64), np.float32), np.array([1.0], np.float32))
    assert np.allclose(out, 1 + 1 + 4 + 280)
    monkeypatch.setattr(optimum.neuron, "NeuronFluxPipeline", FakeFluxDataParallel)
    dp = flux(flux_compiled(tmp_path / "d"))
    # data_parallel_mode "transformer": the transformer spans both cores
    assert dp.capabilities().component_batches["transformer"] == 2
    session = dp.begin_denoise(flux_cond(rows=2))
    out = dp.denoise_step(session, np.zeros((2, 24, 64), np.float32), np.array([0.5, 0.25], np.float32))
    assert np.allclose(out[0], 0.5 + 635) and np.allclose(out[1], 0.25 + 635), "one timestep per row"


def test_sd3_has_no_neuron_pipeline(neuron, tmp_path):
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
    }
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(LoadError, match="StableDiffusion3Pipeline has no optimum-neuron pipeline"):
        neuron(str(tmp_path))
