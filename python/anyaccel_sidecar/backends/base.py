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
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadRequest, SessionNotFound

if TYPE_CHECKING:
    from .families import Family

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
    # True: the denoiser takes one timestep per row; False: a DenoiseStep's rows must share one
    per_sample_timesteps: bool = False
    # loaded components by the executor's names (text_encoder, text_encoder_2, text_encoder_3,
    # unet or transformer, vae_decoder, vae_encoder)
    components: list[str] = field(default_factory=list)
    pipeline_class: str = ""


@dataclass
class TextEncoding:
    hidden: np.ndarray  # [batch, len, dim]
    pooled: np.ndarray | None  # [batch, dim]


@dataclass
class Conditioning:
    """Host float32 arrays, one row per denoiser row (txt_ids/img_ids: shared by all rows)."""

    encoder_hidden_states: np.ndarray  # [rows, tokens, dim]
    pooled: np.ndarray | None = None  # [rows, dim]: SDXL's text_embeds; SD3/Flux's pooled_projections
    time_ids: np.ndarray | None = None  # [rows, n]: SDXL's micro-conditioning
    guidance: np.ndarray | None = None  # [rows]: FLUX.1-dev's distilled guidance
    txt_ids: np.ndarray | None = None  # [tokens, 3]: Flux's text position ids
    img_ids: np.ndarray | None = None  # [latent tokens, 3]: Flux's image position ids

    @property
    def rows(self) -> int:
        return int(self.encoder_hidden_states.shape[0])

    def check(self, family: "Family") -> None:
        """Ranks and row counts; which parts the family needs."""
        if self.encoder_hidden_states.ndim != 3 or self.rows == 0:
            raise BadRequest(f"encoder_hidden_states: expected [rows, tokens, dim], got {list(self.encoder_hidden_states.shape)}")
        what = _DENOISER_LABEL.get(family.name, family.name)
        needs = _NEEDS.get(family.name, ())
        allowed = needs + (("guidance",) if family.name == "flux" else ())
        for name, part, shape in (
            ("pooled", self.pooled, "n"),
            ("time_ids", self.time_ids, "n"),
            ("guidance", self.guidance, None),
            ("txt_ids", self.txt_ids, None),
            ("img_ids", self.img_ids, None),
        ):
            if part is None:
                if name in needs:
                    raise BadRequest(f"{what} needs `{name}` in the conditioning")
                continue
            if name not in allowed:
                takes = ", ".join(("encoder_hidden_states",) + allowed)
                raise BadRequest(f"`{name}` was given, but {what} takes only {takes}")
            if name in ("txt_ids", "img_ids"):
                if part.ndim != 2 or part.shape[1] != 3 or part.shape[0] == 0:
                    raise BadRequest(f"{name}: expected [tokens, 3] position ids shared by every row, got {list(part.shape)}")
            elif shape is None:
                if part.shape != (self.rows,):
                    raise BadRequest(f"{name}: expected [{self.rows}] (one per row), got {list(part.shape)}")
            elif part.ndim != 2 or part.shape[0] != self.rows:
                raise BadRequest(f"{name}: expected [{self.rows}, n], got {list(part.shape)}")
        if self.txt_ids is not None and self.txt_ids.shape[0] != self.encoder_hidden_states.shape[1]:
            raise BadRequest(
                f"txt_ids: {self.txt_ids.shape[0]} positions for {self.encoder_hidden_states.shape[1]} text tokens"
            )

    def select(self, rows: "list[int] | np.ndarray") -> "Conditioning":
        """The given rows (in that order); txt_ids and img_ids are shared, so kept whole."""
        idx = np.asarray(rows, dtype=np.int64)

        def pick(a):
            return None if a is None else a[idx]

        return Conditioning(
            encoder_hidden_states=self.encoder_hidden_states[idx],
            pooled=pick(self.pooled),
            time_ids=pick(self.time_ids),
            guidance=pick(self.guidance),
            txt_ids=self.txt_ids,
            img_ids=self.img_ids,
        )


_DENOISER_LABEL = {
    "sd": "this SD 1.x/2.x UNet",
    "sdxl": "an SDXL UNet",
    "sd3": "an SD3 transformer",
    "flux": "a Flux transformer",
}
# the parts each family's denoiser must get besides encoder_hidden_states
_NEEDS = {
    "sd": (),
    "sdxl": ("pooled", "time_ids"),
    "sd3": ("pooled",),
    "flux": ("pooled", "txt_ids", "img_ids"),
}


@dataclass
class Prepared:
    """A session's conditioning as the backend's denoiser takes it (device tensors)."""

    rows: int
    encoder_hidden_states: object
    pooled: object = None
    time_ids: object = None
    guidance: object = None
    txt_ids: object = None
    img_ids: object = None
    # the host conditioning it was prepared from (select() re-prepares a subset)
    source: Conditioning | None = None


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
        """[batch, len] int64 through `encoder` (text_encoder, text_encoder_2,
        text_encoder_3): the `layer` ("last" or "penultimate") hidden state and the
        pooled embedding (None for T5 encoders)."""

    @abc.abstractmethod
    def prepare_conditioning(self, cond: Conditioning) -> Prepared:
        """Checks the conditioning and puts it where the denoiser reads it (the device)."""

    @abc.abstractmethod
    def run_unet(self, state: Prepared, sample: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """One denoiser (UNet or transformer) evaluation on a prepared conditioning; the
        output has the sample's shape."""

    @abc.abstractmethod
    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """[batch, c, h, w] (already / scaling_factor + shift_factor) -> [batch, 3, 8h, 8w] in [-1, 1]."""

    @abc.abstractmethod
    def vae_encode(self, image: np.ndarray) -> np.ndarray:
        """[batch, 3, H, W] in [-1, 1] -> posterior parameters [batch, 2 * latent, H/8, W/8]."""

    # -- sessions (shared by every backend)

    @property
    def denoiser(self) -> str:
        """The denoiser's component name (unet or transformer), for messages and batches."""
        family = getattr(self, "family", None)
        return family.denoiser if family is not None else "unet"

    def begin_denoise(self, cond: Conditioning) -> int:
        state = self.prepare_conditioning(cond)
        state.source = cond
        return self.sessions.add(state)

    def denoise_step(self, session: int, sample: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        state = self.sessions.get(session)
        assert isinstance(state, Prepared)
        rows = state.rows
        family = getattr(self, "family", None)
        if family is not None and family.packed:
            tokens = None if state.img_ids is None else int(state.img_ids.shape[0])
            if sample.ndim != 3 or sample.shape[0] != rows or (tokens is not None and sample.shape[1] != tokens):
                raise BadRequest(
                    f"sample: expected [{rows}, {tokens if tokens is not None else 'tokens'}, channels] packed latents "
                    f"for the session's {rows} rows and its img_ids, got {list(sample.shape)}"
                )
        elif sample.ndim != 4 or sample.shape[0] != rows:
            raise BadRequest(f"sample: expected [{rows}, channels, h, w] for the session's {rows} rows, got {list(sample.shape)}")
        if timesteps.shape != (rows,):
            raise BadRequest(f"timesteps: expected one per row ({rows}), got {timesteps.size}")
        if not self.capabilities().per_sample_timesteps and np.any(timesteps != timesteps[0]):
            raise BadRequest(f"this {self.denoiser} takes one timestep for the whole batch, but the rows' timesteps differ")
        return self.run_unet(state, sample, timesteps)

    def select_denoise(self, session: int, rows: "list[int] | np.ndarray") -> int:
        """A new session holding the given rows of `session`'s conditioning (txt_ids and
        img_ids shared); `session` stays as it is. What the Rust executor's select does
        over the wire (EndDenoise, then BeginDenoise from its host copy), in process."""
        state = self.sessions.get(session)
        assert isinstance(state, Prepared)
        idx = np.asarray(rows, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= state.rows:
            raise BadRequest(f"select: rows {idx.tolist()} are not within the session's {state.rows} rows")
        assert state.source is not None
        return self.begin_denoise(state.source.select(idx))

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
