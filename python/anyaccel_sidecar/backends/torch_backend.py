"""PyTorch on CPU or CUDA, loading diffusers-format components (SD 1.x/2.x, SDXL,
SD3/3.5 and FLUX.1).

The denoiser is called with the keyword arguments diffusers' own pipelines pass:
UNets (sample, timestep, encoder_hidden_states[, added_cond_kwargs]), SD3's
SD3Transformer2DModel (hidden_states, encoder_hidden_states, pooled_projections,
timestep) and Flux's FluxTransformer2DModel (the same plus txt_ids, img_ids and,
for guidance-distilled FLUX.1-dev, guidance). Timesteps arrive as the transformer's
`timestep` input takes them (SD3: sigma * 1000; Flux: sigma): the Rust pipeline
computes them and this backend passes them through.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BadRequest, ComponentMissing, LoadError
from . import families
from .base import Backend, Capabilities, Conditioning, Prepared, TextEncoding, check_layer, cpu_name, host_memory

log = logging.getLogger("anyaccel_sidecar.torch")

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# --compile: torch.compile's modes for the denoiser (the model's one hot loop).
# reduce-overhead replays CUDA graphs; every mode compiles once per input shape,
# paid by the first call at that shape (the server's warm-up, for its sizes).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
# T5 has relative positions (no fixed length); diffusers' SD3 and Flux pipelines refuse
# max_sequence_length above 512, so that is the most this backend takes
T5_MAX_TOKENS = 512


class TorchBackend(Backend):
    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "auto",
        threads: int | None = None,
        static: tuple[int, int, int] | None = None,
        compile: str = "off",
    ):
        super().__init__()
        import torch
        import diffusers
        import transformers
        from diffusers import AutoencoderKL

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
        if compile not in COMPILE_MODES:
            raise LoadError(f"unknown compile mode {compile!r}; expected {', '.join(COMPILE_MODES)}")
        self.torch = torch
        self.device = torch.device(device)
        self.dtype_name = dtype
        self.dtype = getattr(torch, DTYPES[dtype])
        self.model = model

        index = _model_index(model)
        denoiser = families.denoiser_name(index)
        self.family = families.detect(
            index, model, _component_config(model, denoiser), _component_config(model, "vae") if denoiser == "transformer" else None
        )
        denoiser_cls = getattr(diffusers, families._DENOISERS[self.family.name][1])

        kw = dict(torch_dtype=self.dtype)
        try:
            self.text_encoders = {
                name: getattr(transformers, index[name][1]).from_pretrained(model, subfolder=name, **kw)
                for name in self.family.text_encoders
            }
            self.denoiser_model = denoiser_cls.from_pretrained(model, subfolder=self.family.denoiser, **kw)
            self.vae = AutoencoderKL.from_pretrained(model, subfolder="vae", **kw)
        except (OSError, ValueError) as e:
            raise LoadError(f"{model}: could not load the diffusers components: {e}") from e
        # SD3Transformer2DModel.from_pretrained(torch_dtype=...) was seen leaving every
        # weight fp32 (diffusers 0.39, torch 2.15, no accelerate; the UNets and Flux's
        # transformer load in the asked dtype); cast whatever did not arrive in it
        _cast(self.denoiser_model, self.dtype)
        # SDXL's VAE overflows in fp16; diffusers' SDXL pipelines run it in fp32 (force_upcast).
        # Its SD3 and Flux pipelines decode in the model's dtype, as this does.
        self.vae_dtype = self.dtype
        if self.family.sdxl and self.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False):
            self.vae_dtype = torch.float32
            self.vae.to(torch.float32)
        for m in (*self.text_encoders.values(), self.denoiser_model, self.vae):
            m.to(self.device).eval().requires_grad_(False)
        self.compile_mode = compile
        self.denoise = self._compiled(compile) if compile != "off" else self.denoiser_model
        # The gRPC server calls from a pool of threads (one at a time); compiled code,
        # and reduce-overhead's CUDA graphs above all, are kept per thread, so every
        # compiled call runs on one thread of its own
        self._compiled_thread = ThreadPoolExecutor(1, "denoiser") if compile != "off" else None
        self.scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.text_lens = {name: _max_tokens(m) for name, m in self.text_encoders.items()}
        self.max_text_len = self.text_lens["text_encoder"]
        cfg = self.denoiser_model.config
        if self.family.transformer:
            self.cross_dim = int(cfg.joint_attention_dim)
            self.pooled_dim = int(cfg.pooled_projection_dim)
        else:
            self.cross_dim = int(cfg.cross_attention_dim)
            self.pooled_dim = None
        self.guidance_embeds = bool(getattr(cfg, "guidance_embeds", False))
        components = [*self.family.text_encoders, self.family.denoiser, "vae_decoder", "vae_encoder"]
        self._caps = Capabilities(
            device=device,
            device_name=torch.cuda.get_device_name(self.device) if device == "cuda" else cpu_name(),
            dtype=dtype,
            memory_bytes=(
                torch.cuda.get_device_properties(self.device).total_memory if device == "cuda" else host_memory()
            ),
            vae_encoder=True,
            runtime=f"torch {torch.__version__} / diffusers {diffusers.__version__} / transformers {transformers.__version__}"
            + ("" if compile == "off" else f" / torch.compile {compile}"),
            model=model,
            max_text_len=self.max_text_len,
            # diffusers' UNets and transformers embed a [batch] timestep tensor row by row
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
            # classifier-free guidance doubles the denoiser's rows; FLUX.1 is guidance-distilled
            rows = batch if self.family.packed else 2 * batch
            self.batches.update({self.family.denoiser: rows, "vae_decoder": batch, "vae_encoder": batch})
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
        if compile != "off":
            log.info("denoiser wrapped in torch.compile (mode %s): each new input shape compiles on its first call", compile)

    def _compiled(self, mode: str):
        torch = self.torch
        if not self.family.transformer and self.device.type == "cuda":
            # cuDNN's fastest convolutions on tensor cores are NHWC
            self.denoiser_model.to(memory_format=torch.channels_last)
        # One compile per (rows, size, prompt length) the server sees; past dynamo's
        # limit it would run eagerly (correct, slow), so allow a server's worth.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        return torch.compile(self.denoiser_model, mode=None if mode == "default" else mode)

    def _denoise(self, *args, **kwargs):
        if self._compiled_thread is None:
            return self.denoise(*args, **kwargs)

        def call():
            with self.torch.inference_mode():
                if self.compile_mode == "reduce-overhead":
                    # the previous step's outputs were copied to the host: their graph memory may be reused
                    self.torch.compiler.cudagraph_mark_step_begin()
                return self.denoise(*args, **kwargs)

        return self._compiled_thread.submit(call).result()

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
        limit = self.text_lens[encoder]
        if input_ids.shape[1] > limit:
            raise BadRequest(f"input_ids: {input_ids.shape[1]} tokens, {encoder} takes at most {limit}")
        with self.torch.inference_mode():
            ids = self.torch.from_numpy(input_ids).to(self.device)
            # diffusers' pipelines pass no attention mask, to CLIP (use_attention_mask is false) nor to T5
            out = model(ids, output_hidden_states=layer == "penultimate", return_dict=True)
            hidden = out.hidden_states[-2] if layer == "penultimate" else out.last_hidden_state
            # CLIPTextModelWithProjection: text_embeds; CLIPTextModel: pooler_output; T5: neither
            pooled = getattr(out, "text_embeds", None)
            if pooled is None:
                pooled = getattr(out, "pooler_output", None)
            return TextEncoding(self._out(hidden), None if pooled is None else self._out(pooled))

    def prepare_conditioning(self, cond: Conditioning) -> Prepared:
        cond.check(self.family)
        self._check(self.family.denoiser, cond.rows)
        dim = cond.encoder_hidden_states.shape[2]
        if dim != self.cross_dim:
            what = "the transformer's joint attention takes" if self.family.transformer else "the UNet cross-attends to"
            raise BadRequest(f"encoder_hidden_states: dim {dim}, {what} {self.cross_dim}")
        if self.family.sdxl:
            cfg = self.denoiser_model.config
            # the UNet's add_embedding takes time_ids (each embedded to addition_time_embed_dim) and pooled, concatenated
            want = int(cfg.projection_class_embeddings_input_dim)
            got = cond.time_ids.shape[1] * int(cfg.addition_time_embed_dim) + cond.pooled.shape[1]
            if got != want:
                raise BadRequest(
                    f"pooled {list(cond.pooled.shape)} and time_ids {list(cond.time_ids.shape)} give {got} "
                    f"added-conditioning inputs; the UNet takes {want}"
                )
        if self.family.transformer and cond.pooled.shape[1] != self.pooled_dim:
            raise BadRequest(f"pooled: dim {cond.pooled.shape[1]}, the transformer's pooled_projections take {self.pooled_dim}")
        if self.family.packed:
            if self.guidance_embeds and cond.guidance is None:
                raise BadRequest("this Flux transformer is guidance-distilled (guidance_embeds, FLUX.1-dev): it needs `guidance`")
            if not self.guidance_embeds and cond.guidance is not None:
                raise BadRequest("`guidance` was given, but this Flux transformer has no guidance embedding (FLUX.1-schnell)")
            if self.size is not None:
                tokens = (self.size[0] // (2 * self.scale)) * (self.size[1] // (2 * self.scale))
                if cond.img_ids.shape[0] != tokens:
                    raise BadRequest(
                        f"img_ids: {cond.img_ids.shape[0]} latent tokens; the transformer is fixed to "
                        f"{self.size[0]}x{self.size[1]} (static shapes), {tokens} tokens"
                    )
        with self.torch.inference_mode():
            return Prepared(
                rows=cond.rows,
                encoder_hidden_states=self._in(cond.encoder_hidden_states),
                pooled=None if cond.pooled is None else self._in(cond.pooled),
                time_ids=None if cond.time_ids is None else self._in(cond.time_ids),
                # diffusers' Flux pipeline passes guidance in float32, the position ids in the model's dtype
                guidance=None if cond.guidance is None else self._in(cond.guidance, self.torch.float32),
                txt_ids=None if cond.txt_ids is None else self._in(cond.txt_ids),
                img_ids=None if cond.img_ids is None else self._in(cond.img_ids),
            )

    def run_unet(self, state: Prepared, sample: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        if self.family.packed:
            self._check(self.family.denoiser, sample.shape[0])
        else:
            self._check(self.family.denoiser, sample.shape[0], (sample.shape[3] * self.scale, sample.shape[2] * self.scale))
        with self.torch.inference_mode():
            t = self.torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.float32)).to(self.device)
            x = self._in(sample)
            if self.family.name == "sd3":
                out = self._denoise(
                    hidden_states=x,
                    encoder_hidden_states=state.encoder_hidden_states,
                    pooled_projections=state.pooled,
                    timestep=t,
                    return_dict=False,
                )[0]
            elif self.family.packed:
                extra = {"guidance": state.guidance} if self.guidance_embeds else {}
                out = self._denoise(
                    hidden_states=x,
                    encoder_hidden_states=state.encoder_hidden_states,
                    pooled_projections=state.pooled,
                    timestep=t,
                    img_ids=state.img_ids,
                    txt_ids=state.txt_ids,
                    return_dict=False,
                    **extra,
                )[0]
            else:
                extra = {}
                if self.family.sdxl:
                    extra["added_cond_kwargs"] = {"text_embeds": state.pooled, "time_ids": state.time_ids}
                out = self._denoise(
                    x, t, encoder_hidden_states=state.encoder_hidden_states, return_dict=False, **extra
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


def _cast(model, dtype) -> None:
    """Casts a diffusers model whose floating weights are not all `dtype` (unless it keeps
    some modules in fp32 on purpose)."""
    if getattr(model, "_keep_in_fp32_modules", None):
        return
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model.to(dtype)


def _max_tokens(encoder) -> int:
    """The longest token sequence a text encoder takes: CLIP's position embeddings; T5's cap."""
    cfg = encoder.config
    if getattr(cfg, "model_type", "") == "t5":
        return T5_MAX_TOKENS
    return int(getattr(cfg, "max_position_embeddings", 77))


def _model_index(model: str) -> dict:
    path = Path(model) / "model_index.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if Path(model).exists():
        raise LoadError(f"{model}: no model_index.json; expected a diffusers pipeline folder")
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
