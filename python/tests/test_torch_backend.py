"""The torch backend on the tiny diffusers model against onnxruntime on the
committed ONNX export of the same weights."""

import json
import shutil

import numpy as np
import pytest

from anyaccel_sidecar.backends import Conditioning, load
from anyaccel_sidecar.errors import BadRequest, ComponentMissing, LoadError, SessionNotFound
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


def step(backend, cond, sample, timesteps):
    session = backend.begin_denoise(cond)
    try:
        return backend.denoise_step(session, sample, np.asarray(timesteps, np.float32))
    finally:
        assert backend.end_denoise(session)


def test_capabilities(backend):
    c = backend.capabilities()
    assert (c.device, c.dtype, c.static_shapes, c.vae_encoder, c.max_text_len) == ("cpu", "fp32", False, True, 77)
    assert "torch" in c.runtime and c.memory_bytes > 0
    assert c.per_sample_timesteps and c.pipeline_class == "StableDiffusionPipeline"
    assert c.components == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]


def test_components_match_the_onnx_export(backend):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, size=(2, 77), dtype=np.int64)
    enc = backend.encode_text("text_encoder", ids, "last")
    ref = ort_session("text_encoder").run(["last_hidden_state", "pooler_output"], {"input_ids": ids})
    assert enc.hidden.shape == (2, 77, 32) and np.abs(enc.hidden - ref[0]).max() < ATOL
    assert enc.pooled.shape == (2, 32) and np.abs(enc.pooled - ref[1]).max() < ATOL

    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    eps = step(backend, Conditioning(enc.hidden), sample, [401.0, 401.0])
    ref = ort_session("unet").run(None, {"sample": sample, "timestep": np.array(401.0, np.float32), "encoder_hidden_states": enc.hidden})[0]
    assert eps.shape == sample.shape and np.abs(eps - ref).max() < ATOL

    latents = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    image = backend.vae_decode(latents)
    ref = ort_session("vae_decoder").run(None, {"latent_sample": latents})[0]
    assert image.shape == (1, 3, 64, 64) and np.abs(image - ref).max() < ATOL

    pixels = rng.uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
    params = backend.vae_encode(pixels)
    ref = ort_session("vae_encoder").run(None, {"sample": pixels})[0]
    assert params.shape == (1, 8, 8, 8) and np.abs(params - ref).max() < ATOL


def test_penultimate_layer_is_the_hidden_state_before_the_last(backend):
    import torch

    ids = np.random.default_rng(1).integers(0, 1000, size=(1, 77), dtype=np.int64)
    enc = backend.encode_text("text_encoder", ids, "penultimate")
    with torch.inference_mode():
        ref = backend.text_encoders["text_encoder"](torch.from_numpy(ids), output_hidden_states=True).hidden_states[-2]
    np.testing.assert_array_equal(enc.hidden, ref.numpy())
    last = backend.encode_text("text_encoder", ids, "last")
    assert not np.allclose(enc.hidden, last.hidden), "the final layer norm separates the two"
    np.testing.assert_array_equal(enc.pooled, last.pooled)


def test_per_sample_timesteps_equal_separate_calls(backend):
    rng = np.random.default_rng(2)
    hidden = rng.standard_normal((3, 77, 32), dtype=np.float32)
    sample = rng.standard_normal((3, 4, 8, 8), dtype=np.float32)
    ts = [999.0, 501.0, 1.5]
    together = step(backend, Conditioning(hidden), sample, ts)
    for i, t in enumerate(ts):
        alone = step(backend, Conditioning(hidden[i : i + 1]), sample[i : i + 1], [t])
        np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
    assert not np.allclose(together[0], together[1])


def test_sessions_are_checked_and_bounded(backend):
    hidden = np.zeros((2, 77, 32), np.float32)
    sample = np.zeros((2, 4, 8, 8), np.float32)
    s = backend.begin_denoise(Conditioning(hidden))
    with pytest.raises(BadRequest, match="one per row"):
        backend.denoise_step(s, sample, np.array([1.0], np.float32))
    with pytest.raises(BadRequest, match="session's 2 rows"):
        backend.denoise_step(s, sample[:1], np.array([1.0], np.float32))
    assert backend.end_denoise(s) and not backend.end_denoise(s)
    with pytest.raises(SessionNotFound):
        backend.denoise_step(s, sample, np.array([1.0, 1.0], np.float32))
    # SD 1.x takes no SDXL conditioning, and the text width must fit the UNet
    with pytest.raises(BadRequest, match="pooled"):
        backend.begin_denoise(Conditioning(hidden, pooled=np.zeros((2, 32), np.float32)))
    with pytest.raises(BadRequest, match="cross-attends to 32"):
        backend.begin_denoise(Conditioning(np.zeros((2, 77, 16), np.float32)))
    with pytest.raises(ComponentMissing, match="text_encoder_2"):
        backend.encode_text("text_encoder_2", np.zeros((1, 77), np.int64), "last")
    # the oldest session makes room when the cache is full
    ids = [backend.begin_denoise(Conditioning(hidden)) for _ in range(backend.max_sessions + 1)]
    with pytest.raises(SessionNotFound):
        backend.denoise_step(ids[0], sample, np.array([1.0, 1.0], np.float32))
    assert backend.denoise_step(ids[-1], sample, np.array([1.0, 1.0], np.float32)).shape == sample.shape
    for i in ids:
        backend.end_denoise(i)
    assert len(backend.sessions) == 0


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
    with pytest.raises(BadRequest, match="unet is fixed to batch 4"):
        b.begin_denoise(Conditioning(np.zeros((2, 77, 32), np.float32)))


def test_wrong_layouts_are_load_errors(tmp_path):
    with pytest.raises(LoadError, match="onnx executor"):
        load(str(TINY_ONNX), "cpu")
    with pytest.raises(LoadError, match="no such model folder"):
        load(str(tmp_path / "missing"), "cpu")
    with pytest.raises(LoadError, match="model_index.json"):
        load(str(tmp_path), "cpu")
    with pytest.raises(LoadError, match="Neuron SDK"):
        load(str(TINY_DIFFUSERS), "neuron")


def _variant(tmp_path, name, index_changes, unet_changes=None):
    """A copy of the tiny model's configs (no weights: refusals come before loading)."""
    root = tmp_path / name
    shutil.copytree(TINY_DIFFUSERS, root, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    index = json.loads((root / "model_index.json").read_text())
    index.update(index_changes)
    (root / "model_index.json").write_text(json.dumps(index))
    if unet_changes:
        cfg = json.loads((root / "unet" / "config.json").read_text())
        cfg.update(unet_changes)
        (root / "unet" / "config.json").write_text(json.dumps(cfg))
    return str(root)


@pytest.mark.parametrize(
    "name, index, unet, message",
    [
        ("kontext", {"_class_name": "FluxKontextPipeline"}, None, "FluxKontextPipeline is not supported: FLUX.1 Kontext"),
        ("flux-fill", {"_class_name": "FluxFillPipeline"}, None, "FluxFillPipeline is not supported: FLUX.1 Fill"),
        ("sd3-controlnet", {"_class_name": "StableDiffusion3ControlNetPipeline"}, None, "ControlNet pipelines are not supported"),
        # a Flux class over an SD 1.5 folder: the family's components are checked
        ("flux-without-t5", {"_class_name": "FluxPipeline"}, None, "FluxPipeline without text_encoder_2; Flux needs its T5 encoder"),
        ("unknown", {"_class_name": "KandinskyPipeline"}, None, "KandinskyPipeline is not supported"),
        ("inpaint", {"_class_name": "StableDiffusionInpaintPipeline"}, None, "inpainting"),
        # an inpainting UNet under a text-to-image class name
        ("inpaint-unet", {}, {"in_channels": 9}, "inpainting UNet \\(9 input channels\\)"),
        (
            "refiner",
            {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
            {"addition_embed_type": "text_time"},
            "SDXL refiner",
        ),
        ("t5", {"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "T5EncoderModel"]}, {"addition_embed_type": "text_time"}, "T5EncoderModel"),
        ("lcm", {}, {"time_cond_proj_dim": 256}, "timestep_cond"),
    ],
)
def test_unsupported_pipelines_are_refused_at_load(tmp_path, name, index, unet, message):
    with pytest.raises(LoadError, match=message) as e:
        load(_variant(tmp_path, name, index, unet), "cpu")
    if "supported:" in str(e.value):
        assert "StableDiffusionXLPipeline" in str(e.value), "the message lists what is supported"


def test_compiled_denoiser_equals_eager(backend):
    # torch.compile on the CPU (Inductor's C++ codegen) stands in for the CUDA modes
    # the GPU check times; the wrapped call must give the eager model's numbers.
    compiled = load(str(TINY_DIFFUSERS), "cpu", threads=1, compile="default")
    assert compiled.denoise is not compiled.denoiser_model
    assert compiled.capabilities().runtime.endswith("/ torch.compile default")
    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((2, 77, 32), dtype=np.float32)
    sample = rng.standard_normal((2, 4, 8, 8), dtype=np.float32)
    got = step(compiled, Conditioning(hidden), sample, [801.0, 11.0])
    want = step(backend, Conditioning(hidden), sample, [801.0, 11.0])
    assert not np.array_equal(got[0], got[1])
    np.testing.assert_allclose(got, want, atol=1e-4)
    # the gRPC server calls from any of its threads; the compiled code runs on its own one
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as other:
        again = other.submit(step, compiled, Conditioning(hidden), sample, [801.0, 11.0]).result()
    np.testing.assert_array_equal(again, got)


def test_unknown_compile_mode_is_a_load_error():
    with pytest.raises(LoadError, match="unknown compile mode 'fast'; expected off, default, reduce-overhead, max-autotune"):
        load(str(TINY_DIFFUSERS), "cpu", compile="fast")
