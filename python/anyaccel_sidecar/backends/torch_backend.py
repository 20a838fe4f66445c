"""PyTorch on CPU or CUDA, loading diffusers-format components (SD 1.x/2.x, SDXL)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import BadRequest, ComponentMissing, LoadError
from . import families
from .base import Backend, Capabilities, Conditioning, Prepared, TextEncoding, check_layer, cpu_name, host_memory

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
        super().__init__()
        import torch
        import diffusers
        import transformers
        from diffusers import AutoencoderKL, UNet2DConditionModel

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
        self.family = families.detect(index, model, _component_config(model, "unet"))

        kw = dict(torch_dtype=self.dtype)
        try:
            self.text_encoders = {
                name: getattr(transformers, index[name][1]).from_pretrained(model, subfolder=name, **kw)
                for name in self.family.text_encoders
            }
            self.unet_model = UNet2DConditionModel.from_pretrained(model, subfolder="unet", **kw)
            self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae", **kw)
        except (OSError, ValueError) as e:
            raise LoadError(f"{model}: could not load the diffusers components: {e}") from e
        # SDXL's VAE overflows in fp16; diffusers' SDXL pipelines run it in fp32 (force_upcast)
        self.vae_dtype = self.dtype
        if self.family.sdxl and self.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae_dtype = torch.float32
            self.vae.to(torch.float32)
        for m in (*self.text_encoders.values(), self.unet_model, self.vae):
            m.to(self.device).eval().requires_grad_(False)
        self.scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.max_text_len = int(getattr(self.text_encoders["text_encoder"].config, "max_position_embeddings", 77))
        self.cross_dim = int(self.unet_model.config.cross_attention_dim)
        components = [*self.family.text_encoders, "unet", "vae_decoder", "vae_encoder"]
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
            # diffusers' UNet embeds a [batch] timestep tensor row by row
            per_sample_timesteps=True,
            components=components,
            pipeline_class=self.family.pipeline_class,
        )
        self.batches: dict[str, int] = {}
        self.size: tuple[int, int] | None = None
        if static is not None:
            # Emulates a Neuron-compiled model (fixed batch per component, one image
            # size), so the client's padding and splitting can be tested on CPU.
            batch, width, height = static
            self.batches = {name: batch for name in self.family.text_encoders}
            self.batches.update({"unet": 2 * batch, "vae_decoder": batch, "vae_encoder": batch})
            self.size = (width, height)
            self._caps.static_shapes = True
            self._caps.batch_size = batch
            self._caps.component_batches = dict(self.batches)
            self._caps.sizes = [(width, height)]
        log.info(
            "loaded %s (%s) on %s (%s)%s",
            model,
            self.family.pipeline_class,
            self._caps.device_name,
            dtype,
            f", static {static}" if static else "",
        )

    def _check(self, component: str, batch: int, pixels: tuple[int, int] | None = None) -> None:
        want = self.batches.get(component)
        if want is not None and batch != want:
            raise BadRequest(f"{component} is fixed to batch {want} (static shapes), got {batch}")
        if self.size is not None and pixels is not None and pixels != self.size:
            raise BadRequest(f"{component} is fixed to {self.size[0]}x{self.size[1]} (static shapes), got {pixels[0]}x{pixels[1]}")

    def capabilities(self) -> Capabilities:
        return self._caps

    def _in(self, arr: np.ndarray, dtype=None):
        return self.torch.from_numpy(arr).to(self.device, dtype or self.dtype)

    def _out(self, t) -> np.ndarray:
        return t.to("cpu", self.torch.float32).numpy()

    def encode_text(self, encoder: str, input_ids: np.ndarray, layer: str) -> TextEncoding:
        check_layer(layer)
        model = self.text_encoders.get(encoder)
        if model is None:
            raise ComponentMissing(f"the model has no {encoder} (it has {', '.join(self.text_encoders)})")
        self._check(encoder, input_ids.shape[0])
        if input_ids.shape[1] > self.max_text_len:
            raise BadRequest(f"input_ids: {input_ids.shape[1]} tokens, the text encoder takes at most {self.max_text_len}")
        with self.torch.inference_mode():
            ids = self.torch.from_numpy(input_ids).to(self.device)
            # SD pipelines pass no attention mask (CLIP's use_attention_mask is false)
            out = model(ids, output_hidden_states=layer == "penultimate", return_dict=True)
            hidden = out.hidden_states[-2] if layer == "penultimate" else out.last_hidden_state
            pooled = getattr(out, "text_embeds", None)
            if pooled is None:
                pooled = getattr(out, "pooler_output", None)
            return TextEncoding(self._out(hidden), None if pooled is None else self._out(pooled))

    def prepare_conditioning(self, cond: Conditioning) -> Prepared:
        cond.check(self.family.sdxl)
        self._check("unet", cond.rows)
        dim = cond.encoder_hidden_states.shape[2]
        if dim != self.cross_dim:
            raise BadRequest(f"encoder_hidden_states: dim {dim}, the UNet cross-attends to {self.cross_dim}")
        if self.family.sdxl:
            cfg = self.unet_model.config
            # the UNet's add_embedding takes time_ids (each embedded to addition_time_embed_dim) and pooled, concatenated
            want = int(cfg.projection_class_embeddings_input_dim)
            got = cond.time_ids.shape[1] * int(cfg.addition_time_embed_dim) + cond.pooled.shape[1]
            if got != want:
                raise BadRequest(
                    f"pooled {list(cond.pooled.shape)} and time_ids {list(cond.time_ids.shape)} give {got} "
                    f"added-conditioning inputs; the UNet takes {want}"
                )
        with self.torch.inference_mode():
            return Prepared(
                rows=cond.rows,
                encoder_hidden_states=self._in(cond.encoder_hidden_states),
                pooled=None if cond.pooled is None else self._in(cond.pooled),
                time_ids=None if cond.time_ids is None else self._in(cond.time_ids),
            )

    def run_unet(self, state: Prepared, sample: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        self._check("unet", sample.shape[0], (sample.shape[3] * self.scale, sample.shape[2] * self.scale))
        with self.torch.inference_mode():
            t = self.torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.float32)).to(self.device)
            extra = {}
            if self.family.sdxl:
                extra["added_cond_kwargs"] = {"text_embeds": state.pooled, "time_ids": state.time_ids}
            out = self.unet_model(
                self._in(sample), t, encoder_hidden_states=state.encoder_hidden_states, return_dict=False, **extra
            )[0]
            return self._out(out)

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        if latents.ndim != 4:
            raise BadRequest(f"latent_sample: expected [batch, c, h, w], got {list(latents.shape)}")
        self._check("vae_decoder", latents.shape[0], (latents.shape[3] * self.scale, latents.shape[2] * self.scale))
        with self.torch.inference_mode():
            return self._out(self.vae.decode(self._in(latents, self.vae_dtype), return_dict=False)[0])

    def vae_encode(self, image: np.ndarray) -> np.ndarray:
        if self.vae is None:
            raise ComponentMissing("the model has no VAE encoder")
        self._check("vae_encoder", image.shape[0], (image.shape[3], image.shape[2]))
        with self.torch.inference_mode():
            # the posterior's parameters (mean, logvar), as optimum's vae_encoder export returns them
            return self._out(self.vae.encode(self._in(image, self.vae_dtype)).latent_dist.parameters)


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


def _component_config(model: str, name: str) -> dict | None:
    """A component's config.json, read before any weights so refusals are cheap."""
    local = families.read_json(Path(model) / name / "config.json")
    if local is not None or Path(model).exists():
        return local
    try:
        from huggingface_hub import hf_hub_download

        return families.read_json(Path(hf_hub_download(model, f"{name}/config.json")))
    except Exception:  # noqa: BLE001 - from_pretrained reports a missing component itself
        return None
