"""The torch backend on the tiny diffusers model against onnxruntime on the
committed ONNX export of the same weights."""

import numpy as np
import pytest

from anyaccel_sidecar.backends import load
from anyaccel_sidecar.errors import BadRequest, LoadError
from conftest import TINY_DIFFUSERS, TINY_ONNX

ATOL = 1e-4


@pytest.fixture(scope="module")
def backend():
    return load(str(TINY_DIFFUSERS), "cpu", threads=1)


def ort_session(component):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(TINY_ONNX / component / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def test_capabilities(backend):
    c = backend.capabilities()
    assert (c.device, c.dtype, c.static_shapes, c.vae_encoder, c.max_text_len) == ("cpu", "fp32", False, True, 77)
    assert "torch" in c.runtime and c.memory_bytes > 0


def test_components_match_the_onnx_export(backend):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=(2, 77), dtype=np.int64)
    hidden = backend.encode_text(ids)
    ref = ort_session("text_encoder").run(["last_hidden_state"], {"input_ids": ids})[0]
    assert hidden.shape == (2, 77, 32) and np.abs(hidden - ref).max() < ATOL

    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    eps = backend.unet(sample, 401.0, hidden)
    ref = ort_session("unet").run(None, {"sample": sample, "timestep": np.array(401.0, np.float32), "encoder_hidden_states": hidden})[0]
    assert eps.shape == sample.shape and np.abs(eps - ref).max() < ATOL

    latents = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    image = backend.vae_decode(latents)
    ref = ort_session("vae_decoder").run(None, {"latent_sample": latents})[0]
    assert image.shape == (1, 3, 64, 64) and np.abs(image - ref).max() < ATOL

    pixels = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    params = backend.vae_encode(pixels)
    ref = ort_session("vae_encoder").run(None, {"sample": pixels})[0]
    assert params.shape == (1, 8, 8, 8) and np.abs(params - ref).max() < ATOL


def test_static_emulation_enforces_shapes():
    b = load(str(TINY_DIFFUSERS), "cpu", threads=1, static=(2, 64, 64))
    c = b.capabilities()
    assert c.static_shapes and c.batch_size == 2 and c.sizes == [(64, 64)]
    assert c.component_batches == {"text_encoder": 2, "unet": 4, "vae_decoder": 2, "vae_encoder": 2}
    with pytest.raises(BadRequest, match="fixed to batch 2"):
        b.vae_decode(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(BadRequest, match="fixed to 64x64"):
        b.vae_decode(np.zeros((2, 4, 16, 8), np.float32))
    assert b.vae_decode(np.zeros((2, 4, 8, 8), np.float32)).shape == (2, 3, 64, 64)


def test_wrong_layouts_are_load_errors(tmp_path):
    with pytest.raises(LoadError, match="onnx executor"):
        load(str(TINY_ONNX), "cpu")
    with pytest.raises(LoadError, match="no such model folder"):
        load(str(tmp_path / "missing"), "cpu")
    with pytest.raises(LoadError, match="model_index.json"):
        load(str(tmp_path), "cpu")
    with pytest.raises(LoadError, match="Neuron SDK"):
        load(str(TINY_DIFFUSERS), "neuron")
