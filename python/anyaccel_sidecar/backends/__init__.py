"""Backends run a diffusion model's components (text encoders, UNet or transformer, VAE) on one device family."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ..errors import LoadError
from .base import Backend, Capabilities, Conditioning, TextEncoding

__all__ = ["Backend", "Capabilities", "Conditioning", "TextEncoding", "load", "neuron_available", "resolve_device"]


def neuron_available() -> bool:
    """True when the Neuron SDK (torch-neuronx + optimum-neuron) is importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch_neuronx", "optimum")) and (
        importlib.util.find_spec("optimum.neuron") is not None
    )


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if neuron_available() and any(Path("/dev").glob("neuron*")):
        return "neuron"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(
    model: str,
    device: str,
    dtype: str = "auto",
    threads: int | None = None,
    static: tuple[int, int, int] | None = None,
    compile: str = "off",
) -> Backend:
    """Loads `model` for `device` (cpu, cuda, neuron or auto). `static` = (batch,
    width, height) makes a torch backend enforce fixed shapes like a Neuron model;
    `compile` is a torch.compile mode for a torch backend's denoiser."""
    device = resolve_device(device)
    layout = _layout(model)
    if layout == "onnx":
        raise LoadError(
            f"{model} holds ONNX components (unet/ or transformer/model.onnx); serve it with the onnx executor, "
            "or point the sidecar at the diffusers (PyTorch) or optimum-neuron compiled model"
        )
    if device == "neuron":
        if not neuron_available():
            raise LoadError(
                "--device neuron needs the Neuron SDK (torch-neuronx and optimum-neuron); "
                "install python/requirements-neuron.txt on an inf2/trn1 instance"
            )
        if layout == "diffusers":
            raise LoadError(
                f"{model} is an uncompiled diffusers model; compile it for Neuron first: "
                "anyaccel compile --target neuron --model ... --out DIR"
            )
        if static is not None:
            raise LoadError("--static-batch/--static-size emulate Neuron on torch; a Neuron model has its own shapes")
        if compile != "off":
            raise LoadError("--compile is for the torch backends; a Neuron model is compiled ahead of time")
        from .neuron_backend import NeuronBackend

        return NeuronBackend(model)
    if device not in ("cpu", "cuda"):
        raise LoadError(f"unknown device {device!r}; expected cpu, cuda, neuron or auto")
    if layout == "neuron":
        raise LoadError(f"{model} holds Neuron-compiled components (*.neuron); run it with --device neuron")
    from .torch_backend import TorchBackend

    return TorchBackend(model, device=device, dtype=dtype, threads=threads, static=static, compile=compile)


def _layout(model: str) -> str:
    """onnx, neuron, diffusers, or unknown (a Hub id: decided after download)."""
    root = Path(model)
    if not root.is_dir():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
            return "unknown"  # a Hub repo id; from_pretrained downloads it
        raise LoadError(f"{model}: no such model folder (nor a Hub repo id owner/name)")
    for component in ("unet", "transformer", "text_encoder", "vae_decoder"):
        d = root / component
        if (d / "model.onnx").is_file():
            return "onnx"
        if (d / "model.neuron").is_file():
            return "neuron"
    if not (root / "model_index.json").is_file():
        raise LoadError(f"{model}: not a diffusers pipeline folder (no model_index.json)")
    return "diffusers"
