"""The torch backend on the tiny SDXL model (two CLIP encoders, penultimate
layers, pooled text_embeds, micro-conditioning) against the committed ONNX export
of the same weights and the component references diffusers recorded."""

import json

import numpy as np
import pytest

from anyaccel_sidecar.backends import Conditioning, load
from anyaccel_sidecar.errors import BadRequest
from conftest import SDXL_REFERENCE, TINY_SDXL_DIFFUSERS, TINY_SDXL_ONNX

ATOL = 1e-4


@pytest.fixture(scope="module")
def backend():
    return load(str(TINY_SDXL_DIFFUSERS), "cpu", threads=1)


@pytest.fixture(scope="module")
def reference():
    return json.loads((SDXL_REFERENCE / "components.json").read_text())


def ort_run(component, feeds, outputs=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(str(TINY_SDXL_ONNX / component / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    return s.run(outputs, feeds)


def conditioning(backend, reference):
    """The UNet reference's conditioning: both encoders' penultimate layers side by side."""
    first = backend.encode_text("text_encoder", np.array(reference["text_encoder"]["input_ids"]), "penultimate")
    second = backend.encode_text("text_encoder_2", np.array(reference["text_encoder_2"]["input_ids"]), "penultimate")
    hidden = np.concatenate([first.hidden, second.hidden], axis=-1)
    time_ids = np.array(reference["unet"]["time_ids"], np.float32)
    return Conditioning(hidden, pooled=second.pooled, time_ids=time_ids)


def test_capabilities(backend):
    c = backend.capabilities()
    assert c.pipeline_class == "StableDiffusionXLPipeline" and c.per_sample_timesteps
    assert c.components == ["text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"]


@pytest.mark.parametrize("encoder", ["text_encoder", "text_encoder_2"])
def test_encoders_match_the_references(backend, reference, encoder):
    ref = reference[encoder]
    ids = np.array(ref["input_ids"], np.int64)
    pen = backend.encode_text(encoder, ids, "penultimate")
    last = backend.encode_text(encoder, ids, "last")
    pooled_name = "text_embeds" if encoder == "text_encoder_2" else "pooler_output"
    names = ["last_hidden_state", pooled_name, ref["penultimate_output"]]
    onnx = dict(zip(names, ort_run(encoder, {"input_ids": ids}, names)))
    assert pen.hidden.shape == onnx[ref["penultimate_output"]].shape
    assert np.abs(pen.hidden - onnx[ref["penultimate_output"]]).max() < ATOL
    assert np.abs(last.hidden - onnx["last_hidden_state"]).max() < ATOL
    # pooled: [batch, hidden] (CLIPTextModel's pooler) or [batch, projection] (text_embeds)
    cfg = backend.text_encoders[encoder].config
    width = cfg.projection_dim if encoder == "text_encoder_2" else cfg.hidden_size
    assert pen.pooled.shape == onnx[pooled_name].shape == (2, width)
    assert np.abs(pen.pooled - onnx[pooled_name]).max() < ATOL
    np.testing.assert_array_equal(pen.pooled, last.pooled)
    # and diffusers' own numbers
    assert abs(float(pen.hidden.sum()) - ref[ref["penultimate_output"]]["sum"]) < 1e-2
    assert abs(float(pen.pooled.sum()) - ref[pooled_name]["sum"]) < 1e-3
    np.testing.assert_allclose(pen.hidden.reshape(-1)[:16], ref[ref["penultimate_output"]]["first"], atol=1e-5)


def test_unet_matches_the_reference_with_added_conditioning(backend, reference):
    cond = conditioning(backend, reference)
    import torch

    sample = torch.randn([2, 4, 8, 8], generator=torch.Generator().manual_seed(0)).numpy()
    t = float(reference["unet"]["timestep"])
    session = backend.begin_denoise(cond)
    out = backend.denoise_step(session, sample, np.array([t, t], np.float32))
    backend.end_denoise(session)
    ref = reference["unet"]["out_sample"]
    assert abs(float(out.sum()) - ref["sum"]) < 1e-3
    np.testing.assert_allclose(out.reshape(-1)[:16], ref["first"][:16], atol=1e-5)
    onnx = ort_run(
        "unet",
        {
            "sample": sample,
            "timestep": np.array(t, np.float32),
            "encoder_hidden_states": cond.encoder_hidden_states,
            "text_embeds": cond.pooled,
            "time_ids": cond.time_ids,
        },
    )[0]
    assert np.abs(out - onnx).max() < ATOL


def test_per_sample_timesteps_equal_separate_calls(backend, reference):
    cond = conditioning(backend, reference)
    sample = np.random.default_rng(3).standard_normal((2, 4, 8, 8), dtype=np.float32)
    ts = np.array([981.0, 21.0], np.float32)
    s = backend.begin_denoise(cond)
    together = backend.denoise_step(s, sample, ts)
    backend.end_denoise(s)
    for i in range(2):
        row = Conditioning(cond.encoder_hidden_states[i : i + 1], cond.pooled[i : i + 1], cond.time_ids[i : i + 1])
        s = backend.begin_denoise(row)
        alone = backend.denoise_step(s, sample[i : i + 1], ts[i : i + 1])
        backend.end_denoise(s)
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
    assert not np.allclose(together[0], together[1], atol=1e-3)


def test_time_ids_reach_the_unet(backend, reference):
    cond = conditioning(backend, reference)
    sample = np.zeros((2, 4, 8, 8), np.float32)
    ts = np.array([500.0, 500.0], np.float32)
    a = backend.denoise_step(backend.begin_denoise(cond), sample, ts)
    other = Conditioning(cond.encoder_hidden_states, cond.pooled, cond.time_ids[[1, 1]])
    b = backend.denoise_step(backend.begin_denoise(other), sample, ts)
    assert not np.allclose(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-6)
    for s in list(backend.sessions._items):
        backend.end_denoise(s)


def test_sdxl_conditioning_is_checked(backend, reference):
    cond = conditioning(backend, reference)
    with pytest.raises(BadRequest, match="needs `pooled`"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states))
    with pytest.raises(BadRequest, match="needs `time_ids`"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, pooled=cond.pooled))
    with pytest.raises(BadRequest, match="added-conditioning inputs"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled, cond.time_ids[:, :5]))
    with pytest.raises(BadRequest, match="cross-attends to 80"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states[..., :48], cond.pooled, cond.time_ids))
    with pytest.raises(BadRequest, match="expected \\[2, n\\]"):
        backend.begin_denoise(Conditioning(cond.encoder_hidden_states, cond.pooled[:1], cond.time_ids))


def test_vae_matches_the_export(backend):
    import torch

    latents = torch.randn([1, 4, 8, 8], generator=torch.Generator().manual_seed(1)).numpy()
    image = backend.vae_decode(latents)
    ref = ort_run("vae_decoder", {"latent_sample": latents})[0]
    assert image.shape == (1, 3, 64, 64) and np.abs(image - ref).max() < ATOL
    pixels = np.clip(image, -1, 1)
    params = backend.vae_encode(pixels)
    ref = ort_run("vae_encoder", {"sample": pixels})[0]
    assert params.shape == (1, 8, 8, 8) and np.abs(params - ref).max() < ATOL
