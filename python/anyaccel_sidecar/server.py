"""The gRPC service: health, capabilities, text encoding, denoise sessions and the VAE.

Handlers are registered with grpc's generic handler API, so the sidecar needs only
`grpcio` and `protobuf` at run time (no generated `*_pb2_grpc.py`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from concurrent import futures
from typing import Callable, TypeVar

import grpc
import numpy as np

from . import SERVICE
from . import sidecar_pb2 as pb
from . import tensors
from .backends import Backend, Conditioning
from .errors import BadRequest, ComponentMissing, LoadError, SessionNotFound

log = logging.getLogger("anyaccel_sidecar")
T = TypeVar("T")

# Tensors of a large batch at 1024x1024 run to hundreds of MB; the socket is local.
MAX_MESSAGE = 2**31 - 1
Status = pb.HealthResponse.Status
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
LAYERS = {pb.HIDDEN_LAYER_LAST: "last", pb.HIDDEN_LAYER_PENULTIMATE: "penultimate"}


class SidecarService:
    def __init__(self) -> None:
        self.status = Status.LOADING
        self.message = "loading the model"
        self.backend: Backend | None = None
        # One component call at a time: the device runs one graph at a time anyway,
        # and it bounds memory. Health and capabilities do not take the lock.
        self.lock = threading.Lock()

    # -- lifecycle

    def load(self, factory: Callable[[], Backend]) -> bool:
        t0 = time.monotonic()
        try:
            self.backend = factory()
        except LoadError as e:
            self._fail(str(e))
            return False
        except Exception as e:  # noqa: BLE001 - report any loader failure, then exit
            self._fail(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            return False
        self.status, self.message = Status.SERVING, f"serving (loaded in {time.monotonic() - t0:.1f}s)"
        log.info("model loaded in %.1fs; serving", time.monotonic() - t0)
        return True

    def _fail(self, message: str) -> None:
        self.status, self.message = Status.FAILED, message
        log.error("loading the model failed: %s", message)

    # -- handlers

    def health(self, request, context):
        return pb.HealthResponse(status=self.status, message=self.message, pid=os.getpid())

    def capabilities(self, request, context):
        backend = self._backend(context)
        c = backend.capabilities()
        return pb.CapabilitiesResponse(
            device=c.device,
            device_name=c.device_name,
            dtype=c.dtype,
            memory_bytes=c.memory_bytes,
            vae_encoder=c.vae_encoder,
            static_shapes=c.static_shapes,
            batch_size=c.batch_size,
            component_batches=[pb.ComponentBatch(component=k, batch_size=v) for k, v in c.component_batches.items()],
            sizes=[pb.ImageSize(width=w, height=h) for w, h in c.sizes],
            max_text_len=c.max_text_len,
            runtime=c.runtime,
            model=c.model,
            per_sample_timesteps=c.per_sample_timesteps,
            components=c.components,
            pipeline_class=c.pipeline_class,
        )

    def encode_text(self, request, context):
        encoder = request.encoder or "text_encoder"

        def run(b: Backend):
            if encoder not in TEXT_ENCODERS:
                raise BadRequest(f"unknown text encoder {encoder!r}; expected one of {', '.join(TEXT_ENCODERS)}")
            layer = LAYERS.get(request.layer)
            if layer is None:
                raise BadRequest(f"unknown hidden layer {request.layer}")
            return b.encode_text(encoder, tensors.decode_ids(request), layer)

        out, elapsed = self._run(context, encoder, run)
        return pb.EncodeTextResponse(
            hidden=tensors.encode(out.hidden),
            pooled=None if out.pooled is None else tensors.encode(out.pooled),
            device_seconds=elapsed,
        )

    def begin_denoise(self, request, context):
        def run(b: Backend):
            if not request.HasField("conditioning"):
                raise BadRequest("BeginDenoise needs a conditioning")
            c = request.conditioning
            if not c.HasField("encoder_hidden_states"):
                raise BadRequest("the conditioning needs encoder_hidden_states")
            def part(name, rank):
                return tensors.decode(getattr(c, name), name, rank=rank) if c.HasField(name) else None

            cond = Conditioning(
                encoder_hidden_states=tensors.decode(c.encoder_hidden_states, "encoder_hidden_states", rank=3),
                pooled=part("pooled", 2),
                time_ids=part("time_ids", 2),
                guidance=part("guidance", 1),
                txt_ids=part("txt_ids", 2),
                img_ids=part("img_ids", 2),
            )
            return b.begin_denoise(cond)

        session, _ = self._run(context, self._denoiser(), run)
        return pb.BeginDenoiseResponse(session=session)

    def denoise_step(self, request, context):
        def run(b: Backend):
            # rank 4 ([rows, c, h, w]) or, for Flux, 3 ([rows, tokens, 4c]): the backend checks which
            sample = tensors.decode(request.sample, "sample")
            timesteps = np.asarray(request.timesteps, dtype=np.float32)
            return b.denoise_step(request.session, sample, timesteps)

        out, elapsed = self._run(context, self._denoiser(), run)
        return pb.TensorResponse(output=tensors.encode(out), device_seconds=elapsed)

    def end_denoise(self, request, context):
        backend = self._backend(context)
        # no device lock: dropping the references frees the tensors, whatever runs
        if backend.end_denoise(request.session):
            log.debug("denoise session %d ended", request.session)
        return pb.EndDenoiseResponse()

    def vae_decode(self, request, context):
        return self._tensor(context, "vae_decoder", lambda b: b.vae_decode(tensors.decode(request.input, "latent_sample", rank=4)))

    def vae_encode(self, request, context):
        return self._tensor(context, "vae_encoder", lambda b: b.vae_encode(tensors.decode(request.input, "sample", rank=4)))

    def _denoiser(self) -> str:
        return self.backend.denoiser if self.backend is not None else "unet"

    def _backend(self, context) -> Backend:
        if self.backend is None or self.status != Status.SERVING:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"sidecar is not serving: {self.message}")
        assert self.backend is not None
        return self.backend

    def _tensor(self, context, component: str, fn: Callable[[Backend], np.ndarray]):
        out, elapsed = self._run(context, component, fn)
        return pb.TensorResponse(output=tensors.encode(out), device_seconds=elapsed)

    def _run(self, context, component: str, fn: Callable[[Backend], T]) -> tuple[T, float]:
        """Runs `fn` under the device lock; maps backend errors to status codes."""
        backend = self._backend(context)
        try:
            with self.lock:
                t0 = time.perf_counter()
                out = fn(backend)
                elapsed = time.perf_counter() - t0
        except BadRequest as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{component}: {e}")
        except ComponentMissing as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{component}: {e}")
        except SessionNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{component}: {e}")
        except Exception as e:  # noqa: BLE001 - a failed run is INTERNAL, the process lives on
            log.exception("%s failed", component)
            context.abort(grpc.StatusCode.INTERNAL, f"{component} failed: {type(e).__name__}: {e}")
        log.debug("%s: %.3fs", component, elapsed)
        return out, elapsed


def handlers(service: SidecarService) -> grpc.GenericRpcHandler:
    def unary(fn, req, resp):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Health": unary(service.health, pb.HealthRequest, pb.HealthResponse),
            "GetCapabilities": unary(service.capabilities, pb.CapabilitiesRequest, pb.CapabilitiesResponse),
            "EncodeText": unary(service.encode_text, pb.EncodeTextRequest, pb.EncodeTextResponse),
            "BeginDenoise": unary(service.begin_denoise, pb.BeginDenoiseRequest, pb.BeginDenoiseResponse),
            "DenoiseStep": unary(service.denoise_step, pb.DenoiseStepRequest, pb.TensorResponse),
            "EndDenoise": unary(service.end_denoise, pb.EndDenoiseRequest, pb.EndDenoiseResponse),
            "VaeDecode": unary(service.vae_decode, pb.TensorRequest, pb.TensorResponse),
            "VaeEncode": unary(service.vae_encode, pb.TensorRequest, pb.TensorResponse),
        },
    )


def start_server(service: SidecarService, socket_path: str, workers: int = 8) -> grpc.Server:
    """Binds `socket_path` (replacing a stale socket file) and starts serving."""
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sidecar"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ],
    )
    server.add_generic_rpc_handlers((handlers(service),))
    if server.add_insecure_port(f"unix:{os.path.abspath(socket_path)}") == 0:
        raise OSError(f"could not bind the Unix socket {socket_path}")
    server.start()
    os.chmod(socket_path, 0o600)
    return server
