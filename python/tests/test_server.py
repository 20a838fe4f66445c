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


@pytest.fixture(scope="module")
def sidecar():
    proc, sock = start(TINY_DIFFUSERS, "--threads", "1")
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


def test_health_and_capabilities(sidecar):
    proc, call = sidecar
    h = call("Health", pb.HealthRequest, pb.HealthResponse)(pb.HealthRequest())
    assert h.pid == proc.pid
    c = call("GetCapabilities", pb.CapabilitiesRequest, pb.CapabilitiesResponse)(pb.CapabilitiesRequest())
    assert (c.device, c.dtype, c.static_shapes, c.max_text_len) == ("cpu", "fp32", False, 77)


def test_components_over_the_socket(sidecar):
    _, call = sidecar
    hidden = call("EncodeText", pb.EncodeTextRequest, pb.TensorResponse)(pb.EncodeTextRequest(shape=[2, 77], ids=[5] * 154))
    h = tensors.decode(hidden.output, "h")
    assert h.shape == (2, 77, 32)
    sample = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    out = call("Unet", pb.UnetRequest, pb.TensorResponse)(
        pb.UnetRequest(sample=tensors.encode(sample), timestep=501.0, encoder_hidden_states=hidden.output)
    )
    assert tensors.decode(out.output, "eps").shape == sample.shape and out.device_seconds > 0
    img = call("VaeDecode", pb.TensorRequest, pb.TensorResponse)(pb.TensorRequest(input=tensors.encode(sample[:1])))
    assert tensors.decode(img.output, "img").shape == (1, 3, 64, 64)


def test_bad_requests_are_invalid_argument(sidecar):
    _, call = sidecar
    with pytest.raises(grpc.RpcError) as e:
        call("VaeDecode", pb.TensorRequest, pb.TensorResponse)(pb.TensorRequest(input=pb.Tensor(shape=[1, 4, 8, 8], data=b"\0")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 1024 bytes" in e.value.details()


def test_a_model_that_cannot_load_exits_with_status_3(tmp_path):
    proc, _ = start(tmp_path / "missing")
    assert proc.wait(timeout=120) == 3
    assert "no such model folder" in proc.stderr.read()
