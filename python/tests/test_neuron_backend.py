"""The neuron backend's shape bookkeeping against a stand-in for optimum-neuron.

No Neuron SDK here: `FakePipeline` mimics what optimum-neuron 0.4.5's
NeuronStableDiffusionPipeline exposes (components with `config.neuron`, their call
signatures and outputs, `data_parallel_mode`), as read from its source. It checks this
backend's logic, not the SDK; docs/inferentia.md says what needs real hardware.
"""

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anyaccel_sidecar.errors import BadRequest


class Part:
    def __init__(self, batch, fn, **neuron):
        self.config = SimpleNamespace(neuron={"static_batch_size": batch, **neuron})
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


class FakePipeline:
    vae_scale_factor = 8
    data_parallel_mode = "unet"

    def __init__(self):
        latent = {"static_height": 8, "static_width": 12}
        self.text_encoder = Part(1, lambda ids: {"last_hidden_state": torch.ones(ids.shape[0], ids.shape[1], 4)}, static_sequence_length=77)
        self.unet = Part(
            1,
            lambda s, t, h: (s * 0 + t.expand((s.shape[0],)).view(-1, 1, 1, 1),),
            auto_cast="matmul",
            auto_cast_type="bf16",
            float_dtype="fp32",
            **latent,
        )
        self.vae_decoder = Part(1, lambda z: SimpleNamespace(sample=torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8)), **latent)
        self.vae_encoder = None

    @classmethod
    def from_pretrained(cls, model):
        return cls()


@pytest.fixture
def backend(monkeypatch):
    import optimum

    fake = types.ModuleType("optimum.neuron")
    fake.__version__ = "0.4.5-fake"
    fake.NeuronStableDiffusionPipeline = FakePipeline
    monkeypatch.setitem(sys.modules, "optimum.neuron", fake)
    monkeypatch.setattr(optimum, "neuron", fake, raising=False)
    from anyaccel_sidecar.backends.neuron_backend import NeuronBackend

    return NeuronBackend("compiled/")


def test_capabilities_report_the_compiled_shapes(backend):
    c = backend.capabilities()
    assert c.static_shapes and c.device == "neuron" and c.dtype == "bf16"
    assert c.sizes == [(96, 64)], "static_width/height are latent cells"
    assert c.batch_size == 1
    # data_parallel_mode "unet": the UNet spans both cores, taking the CFG pair
    assert c.component_batches == {"text_encoder": 1, "unet": 2, "vae_decoder": 1}
    assert not c.vae_encoder and c.max_text_len == 77


def test_calls_use_the_compiled_batch(backend):
    out = backend.unet(np.zeros((2, 4, 8, 12), np.float32), 501.0, np.zeros((2, 77, 4), np.float32))
    assert out.shape == (2, 4, 8, 12) and np.all(out == 501.0)
    assert backend.encode_text(np.zeros((1, 77), np.int64)).shape == (1, 77, 4)
    assert backend.vae_decode(np.zeros((1, 4, 8, 12), np.float32)).shape == (1, 3, 64, 96)
    with pytest.raises(BadRequest, match="compiled for batch 2"):
        backend.unet(np.zeros((1, 4, 8, 12), np.float32), 1.0, np.zeros((1, 77, 4), np.float32))


def test_missing_vae_encoder_is_reported(backend):
    from anyaccel_sidecar.errors import ComponentMissing

    with pytest.raises(ComponentMissing, match="img2img"):
        backend.vae_encode(np.zeros((1, 3, 64, 96), np.float32))
