"""optimum-neuron compiled components on AWS Inferentia2 / Trainium.

NOT exercised in this repository's tests (no Neuron hardware here); see
docs/inferentia.md for what is verified and how to run it on inf2.

The artifact is optimum-neuron's compiled layout (`anyaccel compile --target neuron`
or `optimum-cli export neuron`): text_encoder/ (and text_encoder_2/ for SDXL and
Flux), unet/ or transformer/, vae_decoder/, vae_encoder/ each with `model.neuron`
and a config.json whose `neuron` section records the static shapes the component was
traced with (static_batch_size, static_height/width in latent cells,
static_sequence_length). Inputs must have exactly those shapes; the Rust executor
pads and splits batches to the per-component batch this backend reports.

Written against optimum-neuron 0.4.5's NeuronStableDiffusionPipeline,
NeuronStableDiffusionXLPipeline and NeuronFluxPipeline (modeling_diffusion.py,
exporters/neuron): the text encoders return a ModelOutput keyed by the exported
output names (`last_hidden_state`, `pooler_output` / `text_embeds`, and
`hidden_states` when compiled with output_hidden_states, as SDXL's are), except
Flux's T5 (text_encoder_2), which returns `[last_hidden_state]`; the UNet takes
(sample, timestep, encoder_hidden_states[, text_embeds, time_ids]) and was traced
with a `[batch]` timestep (optimum's DummyTimestepInputGenerator; the wrapper
expands a scalar to it), so each row may carry its own timestep. Flux's transformer
(NeuronModelTransformer) takes hidden_states, encoder_hidden_states,
pooled_projections, timestep, img_ids, txt_ids and guidance (FLUX.1-dev) as
keywords, turns the position ids into the rotary embedding on the host, and was
traced with a `[batch]` timestep too (DummyTransformerTimestepInputGenerator).

UNVERIFIED for Flux as for the rest: read from the source, never run on a device.
optimum-neuron 0.4.5 has no StableDiffusion3 pipeline (its exporter only names an
sd3-transformer-2d config), so SD3 artifacts are refused here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import BadRequest, ComponentMissing, LoadError
from . import families
from .base import Backend, Capabilities, Conditioning, Prepared, TextEncoding, check_layer

log = logging.getLogger("anyaccel_sidecar.neuron")

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "transformer", "vae_decoder", "vae_encoder")
PIPELINES = {"sd": "NeuronStableDiffusionPipeline", "sdxl": "NeuronStableDiffusionXLPipeline", "flux": "NeuronFluxPipeline"}


class NeuronBackend(Backend):
    def __init__(self, model: str):
        super().__init__()
        import torch
        import optimum.neuron

        self.torch = torch
        index_path = Path(model) / "model_index.json"
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LoadError(f"{model}: cannot read model_index.json: {e}") from e
        denoiser = families.denoiser_name(index)
        self.family = families.detect(
            index,
            model,
            families.read_json(Path(model) / denoiser / "config.json"),
            families.read_json(Path(model) / "vae_decoder" / "config.json") if denoiser == "transformer" else None,
        )
        cls_name = PIPELINES.get(self.family.name)
        if cls_name is None:
            raise LoadError(
                f"{model}: {self.family.pipeline_class} has no optimum-neuron pipeline "
                f"(optimum-neuron {optimum.neuron.__version__} compiles {', '.join(PIPELINES.values())}); "
                "serve it on the torch or ONNX executor"
            )
        pipeline_cls = getattr(optimum.neuron, cls_name, None)
        if pipeline_cls is None:
            raise LoadError(f"this optimum-neuron ({optimum.neuron.__version__}) has no {cls_name}")
        try:
            pipe = pipeline_cls.from_pretrained(model)
        except Exception as e:  # noqa: BLE001 - the SDK raises many kinds
            raise LoadError(f"{model}: optimum-neuron could not load the compiled pipeline: {e}") from e
        self.pipe = pipe
        self.denoiser_part = getattr(pipe, self.family.denoiser, None)
        if self.denoiser_part is None:
            raise LoadError(f"{model}: no compiled {self.family.denoiser} in the {cls_name} artifact")
        self.text_encoders = {}
        for name in self.family.text_encoders:
            part = getattr(pipe, name, None)
            if part is None:
                raise LoadError(f"{model}: {self.family.pipeline_class} needs a compiled {name}")
            self.text_encoders[name] = part
        unet_cfg = dict(self.denoiser_part.config.neuron)
        scale = int(getattr(pipe, "vae_scale_factor", 8))
        width, height = int(unet_cfg["static_width"]) * scale, int(unet_cfg["static_height"]) * scale
        self.size = (width, height)
        self.scale = scale
        # torch_neuronx.DataParallel spreads a component over both NeuronCores of an
        # inf2 chip: the UNet ("unet" mode, for classifier-free guidance's double batch)
        # or every component ("all"); each core takes one compiled batch.
        dp = getattr(pipe, "data_parallel_mode", "none")
        self.batches: dict[str, int] = {}
        for name in COMPONENTS:
            part = getattr(pipe, name, None)
            if part is None:
                continue
            static = int(part.config.neuron.get("static_batch_size", 1))
            factor = 2 if dp == "all" or (dp in ("unet", "transformer") and name == dp) else 1
            self.batches[name] = static * factor
        images = int(unet_cfg.get("static_batch_size", 1))
        auto_cast = unet_cfg.get("auto_cast")
        dtype = unet_cfg.get("auto_cast_type") if auto_cast not in (None, "none") else unet_cfg.get("float_dtype", "fp32")
        dtype = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(str(dtype), str(dtype))
        if dtype not in ("fp32", "fp16", "bf16"):
            dtype = "bf16" if "bf16" in str(dtype) else "fp32"
        # per encoder: CLIP's 77; Flux's T5 what it was compiled for (512 dev, 256 schnell)
        self.text_lens = {
            name: int(part.config.neuron.get("static_sequence_length", 77)) for name, part in self.text_encoders.items()
        }
        self.max_text_len = self.text_lens["text_encoder"]
        self.text_tokens = unet_cfg.get("static_sequence_length") if self.family.transformer else None
        self.guidance_embeds = bool(getattr(self.denoiser_part.config, "guidance_embeds", False))
        self.vae_encoder = getattr(pipe, "vae_encoder", None)
        cores = sorted(Path("/dev").glob("neuron*"))
        self._caps = Capabilities(
            device="neuron",
            device_name=f"AWS Neuron ({len(cores)} device(s), data parallel: {dp})",
            dtype=dtype,
            memory_bytes=0,
            vae_encoder=self.vae_encoder is not None,
            runtime=f"optimum-neuron {optimum.neuron.__version__} / torch {torch.__version__}",
            model=model,
            max_text_len=self.max_text_len,
            static_shapes=True,
            batch_size=images,
            component_batches=dict(self.batches),
            sizes=[(width, height)],
            # traced with a [batch] timestep input, UNets and Flux's transformer (see the module docs)
            per_sample_timesteps=True,
            components=[n for n in COMPONENTS if n in self.batches],
            pipeline_class=self.family.pipeline_class,
        )
        log.info("loaded %s (%s): %sx%s, batches %s, %s", model, cls_name, width, height, self.batches, dtype)

    def capabilities(self) -> Capabilities:
        return self._caps

    def _check_batch(self, component: str, n: int) -> None:
        want = self.batches.get(component)
        if want is not None and n != want:
            raise BadRequest(f"{component} was compiled for batch {want}, got {n} (the client pads/splits batches)")

    def _check_size(self, component: str, pixels: tuple[int, int]) -> None:
        if pixels != self.size:
            raise BadRequest(f"{component} was compiled for {self.size[0]}x{self.size[1]}, got {pixels[0]}x{pixels[1]}")

    def encode_text(self, encoder: str, input_ids: np.ndarray, layer: str) -> TextEncoding:
        check_layer(layer)
        part = self.text_encoders.get(encoder)
        if part is None:
            raise ComponentMissing(f"the compiled model has no {encoder} (it has {', '.join(self.text_encoders)})")
        self._check_batch(encoder, input_ids.shape[0])
        want = self.text_lens[encoder]
        if input_ids.shape[1] != want:
            raise BadRequest(f"input_ids: {input_ids.shape[1]} tokens, {encoder} was compiled for {want}")
        penultimate = layer == "penultimate"
        if penultimate and not _outputs_hidden_states(part):
            raise ComponentMissing(
                f"{encoder} was compiled without output_hidden_states, so its penultimate layer is not available; "
                "recompile it with output_hidden_states"
            )
        with self.torch.inference_mode():
            out = part(self.torch.from_numpy(input_ids), output_hidden_states=penultimate or None)
            if isinstance(out, (list, tuple)):
                # Flux's T5 (text_encoder_2) returns [last_hidden_state] and no pooled output
                return TextEncoding(out[0].float().numpy(), None)
            hidden = out["hidden_states"][-2] if penultimate else out["last_hidden_state"]
            pooled = out.get("text_embeds")
            if pooled is None:
                pooled = out.get("pooler_output")
            return TextEncoding(hidden.float().numpy(), None if pooled is None else pooled.float().numpy())

    def prepare_conditioning(self, cond: Conditioning) -> Prepared:
        cond.check(self.family)
        self._check_batch(self.family.denoiser, cond.rows)
        if self.text_tokens is not None and cond.encoder_hidden_states.shape[1] != int(self.text_tokens):
            raise BadRequest(
                f"encoder_hidden_states: {cond.encoder_hidden_states.shape[1]} tokens, "
                f"the transformer was compiled for {self.text_tokens}"
            )
        if self.family.packed:
            if self.guidance_embeds and cond.guidance is None:
                raise BadRequest("this Flux transformer is guidance-distilled (guidance_embeds, FLUX.1-dev): it needs `guidance`")
            if not self.guidance_embeds and cond.guidance is not None:
                raise BadRequest("`guidance` was given, but this Flux transformer has no guidance embedding (FLUX.1-schnell)")
            tokens = (self.size[0] // (2 * self.scale)) * (self.size[1] // (2 * self.scale))
            if cond.img_ids.shape[0] != tokens:
                raise BadRequest(
                    f"img_ids: {cond.img_ids.shape[0]} latent tokens, the transformer was compiled for "
                    f"{self.size[0]}x{self.size[1]} ({tokens} tokens)"
                )

        def tensor(a):
            return None if a is None else self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        # compiled models take host tensors; the runtime copies them to the cores
        return Prepared(
            cond.rows,
            tensor(cond.encoder_hidden_states),
            tensor(cond.pooled),
            tensor(cond.time_ids),
            guidance=tensor(cond.guidance),
            txt_ids=tensor(cond.txt_ids),
            img_ids=tensor(cond.img_ids),
        )

    def run_unet(self, state: Prepared, sample: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        self._check_batch(self.family.denoiser, sample.shape[0])
        t = self.torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.float32))
        with self.torch.inference_mode():
            if self.family.packed:
                # the token count was checked against img_ids (and img_ids against the compiled size)
                out = self.denoiser_part(
                    hidden_states=self.torch.from_numpy(sample),
                    encoder_hidden_states=state.encoder_hidden_states,
                    pooled_projections=state.pooled,
                    timestep=t,
                    img_ids=state.img_ids,
                    txt_ids=state.txt_ids,
                    guidance=state.guidance if self.guidance_embeds else None,
                    return_dict=False,
                )
                return out[0].float().numpy()
            self._check_size("unet", (sample.shape[3] * self.scale, sample.shape[2] * self.scale))
            extra = {}
            if self.family.sdxl:
                extra["added_cond_kwargs"] = {"text_embeds": state.pooled, "time_ids": state.time_ids}
            out = self.pipe.unet(self.torch.from_numpy(sample), t, state.encoder_hidden_states, **extra)
            return out[0].float().numpy()

    def vae_decode(self, latents: np.ndarray) -> np.ndarray:
        self._check_batch("vae_decoder", latents.shape[0])
        self._check_size("vae_decoder", (latents.shape[3] * self.scale, latents.shape[2] * self.scale))
        with self.torch.inference_mode():
            return self.pipe.vae_decoder(self.torch.from_numpy(latents)).sample.float().numpy()

    def vae_encode(self, image: np.ndarray) -> np.ndarray:
        if self.vae_encoder is None:
            raise ComponentMissing("the compiled model has no vae_encoder, so img2img is unavailable")
        self._check_batch("vae_encoder", image.shape[0])
        with self.torch.inference_mode():
            return self.vae_encoder(self.torch.from_numpy(image)).latent_dist.parameters.float().numpy()


def _outputs_hidden_states(part) -> bool:
    """Whether a compiled text encoder returns `hidden_states` (optimum-neuron records
    it in the component config or the exported output names)."""
    if getattr(part.config, "output_hidden_states", False) or part.config.neuron.get("output_hidden_states"):
        return True
    outputs = getattr(getattr(part, "neuron_config", None), "outputs", None) or part.config.neuron.get("output_names", [])
    return "hidden_states" in outputs
