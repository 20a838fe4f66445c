"""optimum-neuron compiled components on AWS Inferentia2 / Trainium.

NOT exercised in this repository's tests (no Neuron hardware here); see
docs/inferentia.md for what is verified and how to run it on inf2.

The artifact is optimum-neuron's compiled layout (`anyaccel compile --target neuron`
or `optimum-cli export neuron`): text_encoder/, unet/, vae_decoder/, vae_encoder/ each
with `model.neuron` and a config.json whose `neuron` section records the static shapes
the component was traced with (static_batch_size, static_height/width in latent cells,
static_sequence_length). Inputs must have exactly those shapes; the Rust executor pads
and splits batches to the per-component batch this backend reports.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import BadRequest, ComponentMissing, LoadError
from .base import Backend, Capabilities

log = logging.getLogger("anyaccel_sidecar.neuron")


class NeuronBackend(Backend):
    def __init__(self, model: str):
        import torch
        import optimum.neuron
        from optimum.neuron import NeuronStableDiffusionPipeline

        self.torch = torch
        try:
            pipe = NeuronStableDiffusionPipeline.from_pretrained(model)
        except Exception as e:  # noqa: BLE001 - the SDK raises many kinds
            raise LoadError(f"{model}: optimum-neuron could not load the compiled pipeline: {e}") from e
        self.pipe = pipe
        if pipe.unet is None:
            raise LoadError(f"{model}: no compiled unet (transformer-based pipelines are not supported)")
        unet_cfg = dict(pipe.unet.config.neuron)
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        width, height = int(unet_cfg["static_width"]) * scale, int(unet_cfg["static_height"]) * scale
        # torch_neuronx.DataParallel spreads a component over both NeuronCores of an
        # inf2 chip: the UNet ("unet" mode, for classifier-free guidance's double batch)
        # or every component ("all"); each core takes one compiled batch.
        dp = getattr(pipe, "data_parallel_mode", "none")
        self.batches: dict[str, int] = {}
        for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
            part = getattr(pipe, name, None)
            if part is None:
                continue
            static = int(part.config.neuron.get("static_batch_size", 1))
            factor = 2 if dp == "all" or (dp == "unet" and name == "unet") else 1
            self.batches[name] = static * factor
        images = int(unet_cfg.get("static_batch_size", 1))
        auto_cast = unet_cfg.get("auto_cast")
        dtype = unet_cfg.get("auto_cast_type") if auto_cast not in (None, "none") else unet_cfg.get("float_dtype", "fp32")
        dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(str(dtype), str(dtype))
        if dtype not in ("fp32", "fp16", "bf16"):
            dtype = "bf16" if "bf16" in str(dtype) else "fp32"
        te_cfg = pipe.text_encoder.config.neuron if pipe.text_encoder is not None else {}
        self.max_text_len = int(te_cfg.get("static_sequence_length", 77))
        cores = sorted(Path("/dev").glob("neuron*"))
        self._caps = Capabilities(
            device="neuron",
            device_name=f"AWS Neuron ({len(cores)} device(s), data parallel: {dp})",
            dtype=dtype,
            memory_bytes=0,
            vae_encoder=pipe.vae_encoder is not None,
            runtime=f"optimum-neuron {optimum.neuron.__version__} / torch {torch.__version__}",
            model=model,
            max_text_len=self.max_text_len,
            static_shapes=True,
            batch_size=images,
            component_batches=dict(self.batches),
            sizes=[(width, height)],
        )
        log.info("loaded %s: %sx%s, batches %s, %s", model, width, height, self.batches, dtype)

    def capabilities(self) -> Capabilities:
        return self._caps

    def _check_batch(self, component: str, n: int) -> None:
        want = self.batches.get(component)
        if want is not None and n != want:
            raise BadRequest(f"{component} was compiled for batch {want}, got {n} (the client pads/splits batches)")

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        self._check_batch("text_encoder", input_ids.shape[0])
        with self.torch.inference_mode():
            out = self.pipe.text_encoder(self.torch.from_numpy(input_ids))
            hidden = out["last_hidden_state"] if "last_hidden_state" in out else out[0]
            return hidden.float().numpy()

    def unet(self, sample: np.ndarray, timestep: float, encoder_hidden_states: np.ndarray) -> np.ndarray:
        self._check_batch("unet", sample.shape[0])
        with self.torch.inference_mode():
            out = self.pipe.unet(
                self.torch.from_numpy(sample),
                self.torch.tensor(timestep, dtype=self.torch.float32),
                self.torch.from_numpy(encoder_hidden_states),
            )
            return out[0].float().numpy()

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        self._check_batch("vae_decoder", latents.shape[0])
        with self.torch.inference_mode():
            return self.pipe.vae_decoder(self.torch.from_numpy(latents)).sample.float().numpy()

    def vae_encode(self, image: np.ndarray) -> np.ndarray:
        if self.pipe.vae_encoder is None:
            raise ComponentMissing("the compiled model has no vae_encoder, so img2img is unavailable")
        self._check_batch("vae_encoder", image.shape[0])
        with self.torch.inference_mode():
            return self.pipe.vae_encoder(self.torch.from_numpy(image)).latent_dist.parameters.float().numpy()
