"""PyTorch on CPU or CUDA, loading diffusers-format components."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import BadRequest, ComponentMissing, LoadError
from .base import Backend, Capabilities, cpu_name, host_memory

log = logging.getLogger("anyaccel_sidecar.torch")

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class TorchBackend(Backend):
    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "auto",
        threads: int | None = None,
        static: tuple[int, int, int] | None = None,
    ):
        import torch
        import diffusers
        import transformers
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        if threads:
            torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise LoadError("--device cuda but torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?)")
        if dtype == "auto":
            dtype = "fp16" if device == "cuda" else "fp32"
        if dtype not in DTYPES:
            raise LoadError(f"unknown dtype {dtype!r}; expected fp32, fp16 or bf16")
        self.torch = torch
        self.device = torch.device(device)
        self.dtype_name = dtype
        self.dtype = getattr(torch, DTYPES[dtype])
        self.model = model

        index = _model_index(model)
        if index.get("text_encoder_2") not in (None, [None, None]):
            raise LoadError(f"{model}: two text encoders (SDXL and later) are not supported by this service yet")
        cls = index.get("_class_name", "")
        if cls and "StableDiffusion" not in cls:
            log.warning("%s is a %s; loading its text_encoder/unet/vae as Stable Diffusion components", model, cls)

        kw = dict(torch_dtype=self.dtype)
        try:
            self.text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **kw)
            self.unet_model = UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kw)
            self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae", **kw)
        except (OSError, ValueError) as e:
            raise LoadError(f"{model}: could not load the diffusers components: {e}") from e
        for m in (self.text_encoder, self.unet_model, self.vae):
            m.to(self.device).eval().requires_grad_(False)
        self.scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.max_text_len = int(getattr(self.text_encoder.config, "max_position_embeddings", 77))
        self._caps = Capabilities(
            device=device,
            device_name=torch.cuda.get_device_name(self.device) if device == "cuda" else cpu_name(),
            dtype=dtype,
            memory_bytes=(
                torch.cuda.get_device_properties(self.device).total_memory if device == "cuda" else host_memory()
            ),
            vae_encoder=True,
            runtime=f"torch {torch.__version__} / diffusers {diffusers.__version__} / transformers {transformers.__version__}",
            model=model,
            max_text_len=self.max_text_len,
        )
        self.batches: dict[str, int] = {}
        self.size: tuple[int, int] | None = None
        if static is not None:
            # Emulates a Neuron-compiled model (fixed batch per component, one image
            # size), so the client's padding and splitting can be tested on CPU.
            batch, width, height = static
            self.batches = {"text_encoder": batch, "unet": 2 * batch, "vae_decoder": batch, "vae_encoder": batch}
            self.size = (width, height)
            self._caps.static_shapes = True
            self._caps.batch_size = batch
            self._caps.component_batches = dict(self.batches)
            self._caps.sizes = [(width, height)]
        log.info("loaded %s on %s (%s)%s", model, self._caps.device_name, dtype, f", static {static}" if static else "")

    def _check(self, component: str, batch: int, pixels: tuple[int, int] | None = None) -> None:
        want = self.batches.get(component)
        if want is not None and batch != want:
            raise BadRequest(f"{component} is fixed to batch {want} (static shapes), got {batch}")
        if self.size is not None and pixels is not None and pixels != self.size:
            raise BadRequest(f"{component} is fixed to {self.size[0]}x{self.size[1]} (static shapes), got {pixels[0]}x{pixels[1]}")

    def capabilities(self) -> Capabilities:
        return self._caps

    def _in(self, arr: np.ndarray):
        return self.torch.from_numpy(arr).to(self.device, self.dtype)

    def _out(self, t) -> np.ndarray:
        return t.to("cpu", self.torch.float32).numpy()

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        self._check("text_encoder", input_ids.shape[0])
        if input_ids.shape[1] > self.max_text_len:
            raise BadRequest(f"input_ids: {input_ids.shape[1]} tokens, the text encoder takes at most {self.max_text_len}")
        with self.torch.inference_mode():
            ids = self.torch.from_numpy(input_ids).to(self.device)
            # SD pipelines pass no attention mask (CLIP's use_attention_mask is false)
            return self._out(self.text_encoder(ids, return_dict=False)[0])

    def unet(self, sample: np.ndarray, timestep: float, encoder_hidden_states: np.ndarray) -> np.ndarray:
        if sample.shape[0] != encoder_hidden_states.shape[0]:
            raise BadRequest(
                f"sample batch {sample.shape[0]} != encoder_hidden_states batch {encoder_hidden_states.shape[0]}"
            )
        self._check("unet", sample.shape[0], (sample.shape[3] * self.scale, sample.shape[2] * self.scale))
        with self.torch.inference_mode():
            t = self.torch.tensor(timestep, dtype=self.torch.float32, device=self.device)
            out = self.unet_model(self._in(sample), t, encoder_hidden_states=self._in(encoder_hidden_states), return_dict=False)[0]
            return self._out(out)

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        self._check("vae_decoder", latents.shape[0], (latents.shape[3] * self.scale, latents.shape[2] * self.scale))
        with self.torch.inference_mode():
            return self._out(self.vae.decode(self._in(latents), return_dict=False)[0])

    def vae_encode(self, image: np.ndarray) -> np.ndarray:
        if self.vae is None:
            raise ComponentMissing("the model has no VAE encoder")
        self._check("vae_encoder", image.shape[0], (image.shape[3], image.shape[2]))
        with self.torch.inference_mode():
            # the posterior's parameters (mean, logvar), as optimum's vae_encoder export returns them
            return self._out(self.vae.encode(self._in(image)).latent_dist.parameters)


def _model_index(model: str) -> dict:
    path = Path(model) / "model_index.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if Path(model).exists():
        raise LoadError(f"{model}: no model_index.json; expected a diffusers Stable Diffusion folder")
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, "model_index.json")).read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - any hub failure is a load failure
        raise LoadError(f"{model}: not a local folder, and the Hub did not serve its model_index.json: {e}") from e
