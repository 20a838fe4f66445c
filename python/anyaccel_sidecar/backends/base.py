"""What every backend provides."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field

import numpy as np


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


class Backend(abc.ABC):
    """Runs the components on host float32 arrays; returns float32 arrays."""

    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abc.abstractmethod
    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """[batch, len] int64 -> [batch, len, dim] last hidden state."""

    @abc.abstractmethod
    def unet(self, sample: np.ndarray, timestep: float, encoder_hidden_states: np.ndarray) -> np.ndarray:
        """Noise (or v) prediction with the sample's shape."""

    @abc.abstractmethod
    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        """[batch, 4, h, w] (already / scaling_factor) -> [batch, 3, 8h, 8w] in [-1, 1]."""

    @abc.abstractmethod
    def vae_encode(self, image: np.ndarray) -> np.ndarray:
        """[batch, 3, H, W] in [-1, 1] -> posterior parameters [batch, 2 * latent, H/8, W/8]."""


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
