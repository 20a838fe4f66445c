"""The sidecar as the Rust side runs it: a subprocess on a Unix socket."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from anyaccel_sidecar import SERVICE
from anyaccel_sidecar import sidecar_pb2 as pb
from anyaccel_sidecar import tensors
from conftest import PYTHON_DIR, TINY_DIFFUSERS


def start(model, *extra):
    sock = Path(tempfile.mkdtemp(prefix="sc-")) / "s.sock"
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    proc = subprocess.Popen(
        [sys.executable, "-m", "anyaccel_sidecar", "--socket", str(sock), "--model", str(model), "--device", "cpu", *extra],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, sock


def stub(sock):
    ch = grpc.insecure_channel(f"unix:{sock}")

    def call(method, req, resp):
        return ch.unary_unary(f"/{SERVICE}/{method}", request_serializer=req.SerializeToString, response_deserializer=resp.FromString)

    return call


def serve(model):
    proc, sock = start(model, "--threads", "1")
    call = stub(sock)
    health = call("Health", pb.HealthRequest, pb.HealthResponse)
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if health(pb.HealthRequest(), timeout=2).status == pb.HealthResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        assert time.time() < deadline, "sidecar did not start"
        time.sleep(0.1)
    yield proc, call
    proc.terminate()
    assert proc.wait(timeout=10) == 0, "SIGTERM stops the sidecar cleanly"
    assert not sock.exists(), "the socket is removed on exit"


@pytest.fixture(scope="module")
def sidecar():
    yield from serve(TINY_DIFFUSERS)


def test_health_and_capabilities(sidecar):
    proc, call = sidecar
    h = call("Health", pb.HealthRequest, pb.HealthResponse)(pb.HealthRequest())
    assert h.pid == proc.pid
    c = call("GetCapabilities", pb.CapabilitiesRequest, pb.CapabilitiesResponse)(pb.CapabilitiesRequest())
    assert (c.device, c.dtype, c.static_shapes, c.max_text_len) == ("cpu", "fp32", False, 77)
    assert c.per_sample_timesteps and c.pipeline_class == "StableDiffusionPipeline"
    assert list(c.components) == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]


def test_components_over_the_socket(sidecar):
    _, call = sidecar
    encode = call("EncodeText", pb.EncodeTextRequest, pb.EncodeTextResponse)
    text = encode(pb.EncodeTextRequest(shape=[2, 77], ids=[5] * 154, encoder="text_encoder"))
    h = tensors.decode(text.hidden, "h")
    assert h.shape == (2, 77, 32) and tensors.decode(text.pooled, "p").shape == (2, 32)
    penultimate = encode(pb.EncodeTextRequest(shape=[2, 77], ids=[5] * 154, layer=pb.HIDDEN_LAYER_PENULTIMATE))
    assert not np.allclose(tensors.decode(penultimate.hidden, "h"), h)

    begin = call("BeginDenoise", pb.BeginDenoiseRequest, pb.BeginDenoiseResponse)
    step = call("DenoiseStep", pb.DenoiseStepRequest, pb.TensorResponse)
    end = call("EndDenoise", pb.EndDenoiseRequest, pb.EndDenoiseResponse)
    session = begin(pb.BeginDenoiseRequest(conditioning=pb.Conditioning(encoder_hidden_states=text.hidden))).session
    sample = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    for t in ([501.0, 501.0], [401.0, 21.0]):
        out = step(pb.DenoiseStepRequest(session=session, sample=tensors.encode(sample), timesteps=t))
        assert tensors.decode(out.output, "eps").shape == sample.shape and out.device_seconds > 0
    end(pb.EndDenoiseRequest(session=session))
    end(pb.EndDenoiseRequest(session=session))  # ending twice is fine
    with pytest.raises(grpc.RpcError) as e:
        step(pb.DenoiseStepRequest(session=session, sample=tensors.encode(sample), timesteps=[1.0, 1.0]))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()

    img = call("VaeDecode", pb.TensorRequest, pb.TensorResponse)(pb.TensorRequest(input=tensors.encode(sample[:1])))
    assert tensors.decode(img.output, "img").shape == (1, 3, 64, 64)


def test_bad_requests_are_invalid_argument(sidecar):
    _, call = sidecar
    with pytest.raises(grpc.RpcError) as e:
        call("VaeDecode", pb.TensorRequest, pb.TensorResponse)(pb.TensorRequest(input=pb.Tensor(shape=[1, 4, 8, 8], data=b"\0")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 1024 bytes" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        call("BeginDenoise", pb.BeginDenoiseRequest, pb.BeginDenoiseResponse)(pb.BeginDenoiseRequest())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        call("EncodeText", pb.EncodeTextRequest, pb.EncodeTextResponse)(pb.EncodeTextRequest(shape=[1, 2], ids=[1, 2], encoder="unet"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()


def test_a_missing_encoder_is_failed_precondition(sidecar):
    _, call = sidecar
    with pytest.raises(grpc.RpcError) as e:
        call("EncodeText", pb.EncodeTextRequest, pb.EncodeTextResponse)(
            pb.EncodeTextRequest(shape=[1, 2], ids=[1, 2], encoder="text_encoder_2")
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "text_encoder_2" in e.value.details()


def test_a_model_that_cannot_load_exits_with_status_3(tmp_path):
    proc, _ = start(tmp_path / "missing")
    assert proc.wait(timeout=120) == 3
    assert "no such model folder" in proc.stderr.read()


def test_an_unsupported_pipeline_reports_failed_health(tmp_path):
    import json
    import shutil

    model = tmp_path / "kontext"
    shutil.copytree(TINY_DIFFUSERS, model, ignore=shutil.ignore_patterns("*.safetensors"))
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = "FluxKontextPipeline"
    (model / "model_index.json").write_text(json.dumps(index))
    proc, sock = start(model)
    health = stub(sock)("Health", pb.HealthRequest, pb.HealthResponse)
    seen = None
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            seen = health(pb.HealthRequest(), timeout=2)
            if seen.status == pb.HealthResponse.FAILED:
                break
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    assert proc.wait(timeout=30) == 3
    assert seen is not None and seen.status == pb.HealthResponse.FAILED, seen
    assert "FluxKontextPipeline is not supported: FLUX.1 Kontext" in seen.message
    assert "StableDiffusionXLPipeline" in seen.message and "FluxPipeline" in seen.message


def test_flux_over_the_socket(flux_model):
    """Flux's conditioning (guidance, txt_ids, img_ids) and packed [rows, tokens, 64]
    samples through the wire format, as the Rust side sends them."""
    server = serve(flux_model)
    _, call = next(server)
    try:
        caps = call("GetCapabilities", pb.CapabilitiesRequest, pb.CapabilitiesResponse)(pb.CapabilitiesRequest())
        assert caps.pipeline_class == "FluxPipeline" and caps.per_sample_timesteps
        assert list(caps.components) == ["text_encoder", "text_encoder_2", "transformer", "vae_decoder", "vae_encoder"]
        encode = call("EncodeText", pb.EncodeTextRequest, pb.EncodeTextResponse)
        t5 = encode(pb.EncodeTextRequest(shape=[2, 12], ids=[5] * 24, encoder="text_encoder_2"))
        assert not t5.HasField("pooled"), "T5 has no pooled output"
        clip = encode(pb.EncodeTextRequest(shape=[2, 77], ids=[5] * 154, encoder="text_encoder"))
        hidden = tensors.decode(t5.hidden, "h")
        grid = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
        img_ids = np.concatenate([np.zeros((16, 1)), grid], 1).astype(np.float32)
        cond = pb.Conditioning(
            encoder_hidden_states=t5.hidden,
            pooled=clip.pooled,
            guidance=tensors.encode(np.array([3.5, 1.0], np.float32)),
            txt_ids=tensors.encode(np.zeros((hidden.shape[1], 3), np.float32)),
            img_ids=tensors.encode(img_ids),
        )
        begin = call("BeginDenoise", pb.BeginDenoiseRequest, pb.BeginDenoiseResponse)
        step = call("DenoiseStep", pb.DenoiseStepRequest, pb.TensorResponse)
        session = begin(pb.BeginDenoiseRequest(conditioning=cond)).session
        sample = np.random.default_rng(1).standard_normal((2, 16, 64)).astype(np.float32)
        out = tensors.decode(step(pb.DenoiseStepRequest(session=session, sample=tensors.encode(sample), timesteps=[1.0, 0.5])).output, "v")
        assert out.shape == sample.shape and not np.allclose(out[0], out[1])
        with pytest.raises(grpc.RpcError) as e:
            step(pb.DenoiseStepRequest(session=session, sample=tensors.encode(sample.reshape(2, 16, 8, 8)), timesteps=[1.0, 0.5]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "transformer: sample" in e.value.details()
        cond.ClearField("guidance")  # the guidance-distilled transformer needs it
        with pytest.raises(grpc.RpcError) as e:
            begin(pb.BeginDenoiseRequest(conditioning=cond))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs `guidance`" in e.value.details()
    finally:
        for _ in server:
            pass
