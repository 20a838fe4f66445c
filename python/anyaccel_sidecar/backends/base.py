"""What every backend provides."""

from __future__ import annotations

import abc
import itertools
import logging
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadRequest, SessionNotFound

log = logging.getLogger("anyaccel_sidecar")

LAYERS = ("last", "penultimate")


@dataclass
class Capabilities:
    device: str  # cpu, cuda, neuron
    device_name: str
    dtype: str  # fp32, fp16, bf16
    memory_bytes: int
    vae_encoder: bool
    runtime: str
    model: str
    max_text_len: int = 77
    static_shapes: bool = False
    # for static shapes: images per compiled batch, batch per component, sizes (w, h)
    batch_size: int = 0
    component_batches: dict[str, int] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    # True: the UNet takes one timestep per row; False: a DenoiseStep's rows must share one
    per_sample_timesteps: bool = False
    # loaded components by the executor's names (text_encoder, text_encoder_2, unet, vae_decoder, vae_encoder)
    components: list[str] = field(default_factory=list)
    pipeline_class: str = ""


@dataclass
class TextEncoding:
    hidden: np.ndarray  # [batch, len, dim]
    pooled: np.ndarray | None  # [batch, dim]


@dataclass
class Conditioning:
    """Host float32 arrays, one row per UNet row."""

    encoder_hidden_states: np.ndarray  # [rows, tokens, dim]
    pooled: np.ndarray | None = None  # [rows, dim]: SDXL's text_embeds
    time_ids: np.ndarray | None = None  # [rows, n]: SDXL's micro-conditioning

    @property
    def rows(self) -> int:
        return int(self.encoder_hidden_states.shape[0])

    def check(self, sdxl: bool) -> None:
        """Ranks and row counts; which parts the family needs."""
        if self.encoder_hidden_states.ndim != 3 or self.rows == 0:
            raise BadRequest(f"encoder_hidden_states: expected [rows, tokens, dim], got {list(self.encoder_hidden_states.shape)}")
        for name, part in (("pooled", self.pooled), ("time_ids", self.time_ids)):
            if part is None:
                if sdxl:
                    raise BadRequest(f"an SDXL UNet needs `{name}` in the conditioning")
                continue
            if not sdxl:
                raise BadRequest(f"`{name}` was given, but this SD 1.x/2.x UNet takes only encoder_hidden_states")
            if part.ndim != 2 or part.shape[0] != self.rows:
                raise BadRequest(f"{name}: expected [{self.rows}, n], got {list(part.shape)}")


@dataclass
class Prepared:
    """A session's conditioning as the backend's UNet takes it (device tensors)."""

    rows: int
    encoder_hidden_states: object
    pooled: object = None
    time_ids: object = None


class SessionCache:
    """Conditioning kept between steps, under ids the client holds.

    Bounded: a client that never ends its sessions (or dies) cannot fill the
    device; the oldest session goes first, and its next step gets NOT_FOUND, on
    which the client begins it again.
    """

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._items: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()
        # a random start: ids from before a restart do not name new sessions
        self._ids = itertools.count(secrets.randbits(62) + 1)

    def add(self, value: object) -> int:
        with self._lock:
            sid = next(self._ids)
            self._items[sid] = value
            while len(self._items) > self.capacity:
                old, _ = self._items.popitem(last=False)
                log.warning("denoise session cache is full (%d): evicting the oldest session %d", self.capacity, old)
            return sid

    def get(self, sid: int) -> object:
        with self._lock:
            try:
                return self._items[sid]
            except KeyError:
                raise SessionNotFound(f"denoise session {sid} is unknown (ended, evicted, or the sidecar restarted)") from None

    def pop(self, sid: int) -> bool:
        with self._lock:
            return self._items.pop(sid, None) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class Backend(abc.ABC):
    """Runs the components on host float32 arrays; returns float32 arrays.

    Denoising is a session: `begin_denoise` prepares the conditioning once (on the
    device) and keeps it; `denoise_step` sends only latents and timesteps."""

    max_sessions = 16

    def __init__(self) -> None:
        self.sessions = SessionCache(self.max_sessions)

    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def encode_text(self, encoder: str, input_ids: np.ndarray, layer: str) -> TextEncoding:
        """[batch, len] int64 through `encoder` (text_encoder, text_encoder_2): the
        `layer` ("last" or "penultimate") hidden state and the pooled embedding."""

    @abc.abstractmethod
    def prepare_conditioning(self, cond: Conditioning) -> Prepared:
        """Checks the conditioning and puts it where the UNet reads it (the device)."""

    @abc.abstractmethod
    def run_unet(self, state: Prepared, sample: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """One UNet evaluation on a prepared conditioning; the output has the sample's shape."""

    @abc.abstractmethod
    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """[batch, 4, h, w] (already / scaling_factor) -> [batch, 3, 8h, 8w] in [-1, 1]."""

    @abc.abstractmethod
    def vae_encode(self, image: np.ndarray) -> np.ndarray:
        """[batch, 3, H, W] in [-1, 1] -> posterior parameters [batch, 2 * latent, H/8, W/8]."""

    # -- sessions (shared by every backend)

    def begin_denoise(self, cond: Conditioning) -> int:
        return self.sessions.add(self.prepare_conditioning(cond))

    def denoise_step(self, session: int, sample: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        state = self.sessions.get(session)
        assert isinstance(state, Prepared)
        rows = state.rows
        if sample.ndim != 4 or sample.shape[0] != rows:
            raise BadRequest(f"sample: expected [{rows}, channels, h, w] for the session's {rows} rows, got {list(sample.shape)}")
        if timesteps.shape != (rows,):
            raise BadRequest(f"timesteps: expected one per row ({rows}), got {timesteps.size}")
        if not self.capabilities().per_sample_timesteps and np.any(timesteps != timesteps[0]):
            raise BadRequest("this UNet takes one timestep for the whole batch, but the rows' timesteps differ")
        return self.run_unet(state, sample, timesteps)

    def end_denoise(self, session: int) -> bool:
        return self.sessions.pop(session)


def check_layer(layer: str) -> None:
    if layer not in LAYERS:
        raise BadRequest(f"unknown hidden layer {layer!r}; expected one of {', '.join(LAYERS)}")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} threads)"
    except OSError:
        pass
    import platform

    return f"{platform.machine()} CPU ({os.cpu_count()} threads)"


def host_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0
