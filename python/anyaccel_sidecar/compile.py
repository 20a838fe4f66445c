#!/usr/bin/env python3
"""`anyaccel compile`'s Python half: turns a diffusers model (a local folder or a
Hugging Face Hub id) into the artifact one accelerator serves, writes
`anyaccel-manifest.json` beside it, and optionally pushes it to a Hub repo.
SD 1.x/2.x, SDXL, SD3/3.5 and FLUX.1 (dev, schnell) pipelines compile (the family is
read from model_index.json and recorded in the manifest); every ONNX target's denoiser
(UNet or transformer) takes one timestep per row.

    python compile.py --model DIR_OR_HUB_ID --target onnx-fp32 --out DIR
    python compile.py --model ... --target neuron --batch-size 1 --size 512x512 --out DIR

Targets:
  onnx-fp32  optimum's ONNX export on the CPU (the layout the onnx executor serves), with
             the denoiser's attention and layer norms fused for ONNX Runtime's CPU kernels
             (ONNX Runtime's "unet" fusions for UNets, "mmdit" for SD3/Flux transformers;
             --no-optimize keeps optimum's graph as exported)
  onnx-int8  onnx-fp32 with the denoiser's MatMul weights quantized to int8 (dynamic
             quantization, VNNI on x86; text encoders and VAE stay fp32); faster on CPUs,
             at a measured quality cost
  onnx-openvino  optimum's fp32 export as is, for `--device openvino` (OpenVINO fuses the
             graph itself and cannot load ONNX Runtime's fused operators); x86_64 CPUs
  onnx-fp16  for CUDA GPUs, built on any machine (no GPU needed): optimum's fp32 export on
             the CPU, then ONNX Runtime's CUDA fusions for Stable Diffusion (fused attention,
             GroupNorm, SkipGroupNorm, BiasSplitGelu, BiasAdd, NhwcConv, packed QKV/KV) and an
             fp16 conversion of the denoiser and CLIP text encoders; the VAE and T5 stay fp32
  neuron     optimum-neuron's compiled layout for inf2/trn1 (static batch and size):
             SD, SDXL and Flux (NeuronFluxPipeline); optimum-neuron has no SD3 pipeline

Self-contained (standard library plus the exporters), so the Rust binary embeds it
and runs it in the environment it prepares. The artifact is built in a staging folder
beside --out and renamed into place at the end: a failed compile leaves no
half-written artifact.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

MANIFEST = "anyaccel-manifest.json"
MANIFEST_VERSION = 1
TARGETS = {
    # target: (accelerator, dtype, layout)
    "onnx-fp32": ("cpu", "fp32", "optimum-onnx"),
    "onnx-int8": ("cpu", "int8", "optimum-onnx"),
    "onnx-openvino": ("cpu", "fp32", "optimum-onnx"),
    "onnx-fp16": ("cuda", "fp16", "optimum-onnx"),
    "neuron": ("neuron", "bf16", "optimum-neuron"),
}
# What a diffusers SD repo needs for an export (no .ckpt, flax or other formats).
HUB_ALLOW = [
    "model_index.json", "scheduler/*", "tokenizer/*", "tokenizer_2/*", "tokenizer_3/*",
    "text_encoder/*", "text_encoder_2/*", "text_encoder_3/*", "unet/*", "transformer/*", "vae/*",
]
HUB_IGNORE = ["*.ckpt", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb", "*.neuron"]
COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer", "vae_decoder", "vae_encoder")
# Pipeline classes by family, as the Rust pipeline serves them (crates/pipeline/src/family.rs).
FAMILIES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "LatentConsistencyModelPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3",
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
}
# the denoiser's folder per family
DENOISERS = {"sd": "unet", "sdxl": "unet", "sd3": "transformer", "flux": "transformer"}
# the text encoders each family's export must produce (SD3's T5, text_encoder_3, is optional)
TEXT_ENCODERS = {
    "sd": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sd3": ("text_encoder", "text_encoder_2"),
    "flux": ("text_encoder", "text_encoder_2"),
}


class CompileError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[compile] {msg}", file=sys.stderr, flush=True)


def parse_size(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size must be WxH, e.g. 512x512 (got {s!r})")
    w, h = int(m.group(1)), int(m.group(2))
    if w % 8 or h % 8 or w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive multiples of 8 (got {w}x{h})")
    return w, h


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="anyaccel compile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="diffusers folder or Hub repo id")
    ap.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    ap.add_argument("--target", required=True, choices=sorted(TARGETS))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--batch-size", type=int, default=None, help="neuron: images per compiled batch (default 1)")
    ap.add_argument("--size", type=parse_size, default=None, help="neuron: image size WxH (default: the model's native size)")
    ap.add_argument("--push", default=None, metavar="REPO", help="upload the artifact to this Hub model repo")
    ap.add_argument("--force", action="store_true", help="replace a non-empty --out")
    ap.add_argument("--no-validate", action="store_true", help="skip the exporter's numerical validation")
    ap.add_argument("--no-optimize", action="store_true", help="onnx-fp32: keep optimum's denoiser graph unfused")
    ap.add_argument("--tensor-parallel-size", type=int, default=None,
                    help="neuron, Flux: NeuronCores the transformer and T5 are sharded over (default 8)")
    ap.add_argument("--sequence-length", type=int, default=None,
                    help="neuron, Flux: T5 tokens to compile for (default 512 for FLUX.1-dev, 256 for schnell)")
    args = ap.parse_args(argv)
    if args.target != "neuron" and (args.batch_size is not None or args.size is not None):
        ap.error("--batch-size and --size apply to --target neuron; ONNX exports take any batch and size")
    if args.target != "neuron" and (args.tensor_parallel_size is not None or args.sequence_length is not None):
        ap.error("--tensor-parallel-size and --sequence-length apply to --target neuron; ONNX exports take any text length")
    if args.no_optimize and args.target != "onnx-fp32":
        ap.error("--no-optimize applies to --target onnx-fp32 (onnx-int8 quantizes the optimized graph; "
                 "onnx-openvino is never optimized for ONNX Runtime)")
    if args.batch_size is not None and args.batch_size < 1:
        ap.error("--batch-size must be at least 1")
    return args


# ---------------------------------------------------------------------------
# hashing


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_files(root: Path) -> list[Path]:
    """Files under root (following the Hub cache's symlinks), hidden ones skipped, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name != MANIFEST:
                out.append(Path(dirpath) / name)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def tree_hash(root: Path) -> dict:
    """SHA-256 over (relative path, size, content hash) of every file: the content
    hash of a model folder, independent of where it lies."""
    h = hashlib.sha256()
    files = []
    for p in tree_files(root):
        rel = p.relative_to(root).as_posix()
        digest = file_sha256(p)
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0{digest}\n".encode())
        files.append({"path": rel, "bytes": size, "sha256": digest})
    return {"sha256": h.hexdigest(), "files": files, "bytes": sum(f["bytes"] for f in files)}


# ---------------------------------------------------------------------------
# source


def resolve_source(model: str, revision: str | None) -> tuple[Path, str | None]:
    """A local folder, or the Hub repo downloaded into the Hugging Face cache."""
    p = Path(model)
    if p.is_dir():
        if revision:
            raise CompileError("--revision applies to Hub ids, not local folders")
        if not (p / "model_index.json").is_file():
            raise CompileError(f"{model}: no model_index.json; expected a diffusers pipeline folder")
        family = family_of(p)
        for component in ("text_encoder", DENOISERS[family], "vae"):
            if not (p / component).is_dir():
                raise CompileError(f"{model}: no {component}/ folder; expected the diffusers (PyTorch) layout")
        return p.resolve(), None
    if p.exists() or model.startswith((".", "/")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise CompileError(f"{model}: no such model folder, and not a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    log(f"downloading {model} from the Hub (cache: HF_HOME)")
    path = Path(snapshot_download(model, revision=revision, allow_patterns=HUB_ALLOW, ignore_patterns=HUB_IGNORE))
    family_of(path)
    # the snapshot folder is named after the commit it holds
    return path, path.name


def family_of(src: Path) -> str:
    """The model family of a diffusers folder, or a CompileError naming the class."""
    index = json.loads((src / "model_index.json").read_text())
    cls = index.get("_class_name", "")
    family = FAMILIES.get(cls)
    supported = ", ".join(FAMILIES)
    if family is None:
        raise CompileError(f"{cls or 'a pipeline without _class_name'} is not a pipeline anyaccel serves; supported: {supported}")
    if family == "sdxl" and not (index.get("text_encoder") or [None])[0]:
        raise CompileError(f"{cls} without text_encoder is an SDXL refiner, which anyaccel does not serve; supported: {supported}")
    if family in ("sd3", "flux") and not (index.get("text_encoder_2") or [None])[0]:
        raise CompileError(f"{cls} without text_encoder_2 is not a complete {family} pipeline; supported: {supported}")
    unet = src / "unet" / "config.json"
    if unet.is_file() and json.loads(unet.read_text()).get("in_channels", 4) != 4:
        raise CompileError(f"{cls}: its UNet takes {json.loads(unet.read_text())['in_channels']} channels (inpainting); supported: {supported}")
    transformer = src / "transformer" / "config.json"
    if family in ("sd3", "flux") and transformer.is_file():
        channels = int(json.loads(transformer.read_text()).get("in_channels", 16 if family == "sd3" else 64))
        vae = src / "vae" / "config.json"
        latent = int(json.loads(vae.read_text()).get("latent_channels", 16)) if vae.is_file() else 16
        want = latent if family == "sd3" else 4 * latent
        if channels != want or (family == "sd3" and channels > 16):
            what = "inpainting or control channels" if family == "sd3" else "FLUX.1 Fill/Control's image or control channels"
            raise CompileError(
                f"{cls}: its transformer takes {channels} input channels, not {want} for its {latent}-channel VAE "
                f"({what}); supported: {supported}"
            )
    return family


# ---------------------------------------------------------------------------
# exporters


def export_onnx(src: Path, out: Path, target: str, validate: bool) -> dict:
    import torch
    from optimum.exporters.onnx import main_export

    # Every ONNX target exports fp32 on the CPU: onnx-fp16 converts afterwards
    # (convert_fp16), so a build node needs no GPU and the artifact does not depend on
    # which GPU (or none) the compile ran on.
    device, dtype = "cpu", "fp32"
    # tracing chatter (TracerWarning, constant folding) is not actionable for an operator
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message="Constant folding")
    log(f"exporting {src} to ONNX ({dtype}, on {device}) with optimum")
    family = family_of(src)
    main_export(str(src), output=str(out), task="text-to-image", device=device, dtype=dtype, do_validation=validate)
    needed = [*TEXT_ENCODERS[family], DENOISERS[family], "vae_decoder"]
    if family == "sd3" and (src / "text_encoder_3").is_dir():
        needed.append("text_encoder_3")
    for component in needed:
        if not (out / component / "model.onnx").is_file():
            raise CompileError(f"the export produced no {component}/model.onnx")
    return {"kind": "dynamic"}


def per_sample_timesteps(unet_dir: Path, validate: bool = True) -> dict:
    """Makes the UNet take one timestep per row (`[batch]`) instead of optimum's scalar,
    so rows at different steps can share a call. diffusers' UNet unsqueezes a scalar
    timestep and expands it to the batch; with a `[batch]` input the unsqueeze goes and
    the expand is a no-op. Graphs of another shape are left as they are (the executor
    then broadcasts one timestep).

    SD3 and Flux transformers (a `transformer/` folder) are exported with a `[step]`
    timestep already (optimum's DummyTransformerTimestepInputGenerator), which the graph
    broadcasts against the batch: that is checked, not changed."""
    import onnx

    path = unet_dir / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    ts = next((i for i in graph.input if i.name == "timestep"), None)
    if ts is None:
        return {"applied": False, "reason": "no timestep input"}
    dims = ts.type.tensor_type.shape.dim
    if len(dims) == 1 and dims[0].dim_param:
        if not _is_transformer(graph):
            return {"applied": False, "reason": "already per-sample"}
        report = {"applied": False, "reason": "exported per-sample", "timestep_shape": [dims[0].dim_param]}
        del model, graph
        if validate:
            # two rows at different timesteps in one call against each row alone
            report["check"] = _compare_timesteps(path, path)
        return report
    if len(dims) != 0:
        return {"applied": False, "reason": f"timestep has rank {len(dims)}"}
    users = [n for n in graph.node if "timestep" in n.input]
    if len(users) != 1 or users[0].op_type != "Unsqueeze":
        return {"applied": False, "reason": "timestep is not unsqueezed once; kept scalar"}
    unsq = users[0]
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name == unsq.output[0]:
                n.input[k] = "timestep"
    graph.node.remove(unsq)
    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch_size"
    ts.type.tensor_type.shape.dim.add().dim_param = batch
    candidate = unet_dir / "per_sample.onnx"
    # The weights stay in the external data file the proto already points at.
    onnx.save(model, str(candidate))
    report = {"applied": True}
    if validate:
        report["check"] = _compare_timesteps(path, candidate)
    candidate.replace(path)
    return report


def _is_transformer(graph) -> bool:
    """An SD3/Flux transformer export (hidden_states in), not a UNet (sample in)."""
    return any(i.name == "hidden_states" for i in graph.input)


def _compare_timesteps(scalar: Path, per_sample: Path) -> dict:
    """Two rows at different timesteps in one call against each row alone on the
    scalar graph (for transformers: the same graph, one row at a time): the largest
    difference."""
    import numpy as np
    import onnxruntime as ort

    ref, feeds = _denoiser_feeds(scalar)
    new = ref if per_sample == scalar else ort.InferenceSession(str(per_sample), providers=["CPUExecutionProvider"])
    # Flux's transformer takes sigma (diffusers passes t / 1000); UNets and SD3 take t
    steps = [1.0, 0.02] if "img_ids" in feeds else [999.0, 1.0]
    dtype = feeds["timestep"].dtype
    rank = feeds["timestep"].ndim
    shared = {"txt_ids", "img_ids"}  # Flux's position ids: one set for every row
    want = []
    for row, t in enumerate(steps):
        one = {k: v[row : row + 1] if v.ndim and k != "timestep" and k not in shared else v for k, v in feeds.items()}
        one["timestep"] = np.array([t] if rank else t, dtype=dtype)
        want.append(ref.run(None, one)[0])
    both = dict(feeds)
    both["timestep"] = np.array(steps, dtype=dtype)
    got = new.run(None, both)[0]
    err = float(np.abs(got - np.concatenate(want)).max())
    if not err < 1e-3:
        raise CompileError(f"the per-sample timestep denoiser moved by {err} against one row at a time")
    # the check says something only if the timestep moves the output: row 0 at the other step
    other = {k: v[0:1] if v.ndim and k != "timestep" and k not in shared else v for k, v in feeds.items()}
    other["timestep"] = np.array([steps[1]] if rank else steps[1], dtype=dtype)
    effect = float(np.abs(ref.run(None, other)[0] - want[0]).max())
    if not effect > 10 * err:
        raise CompileError(f"the timestep barely moves the denoiser's output ({effect}); the per-row check proves nothing")
    return {"max_abs_error": err, "timestep_moves_output_by": effect}


# ---------------------------------------------------------------------------
# CPU graph optimisation and int8 quantization of the denoiser (UNet or transformer)


def unet_passes(target: str, no_optimize: bool) -> tuple[bool, bool]:
    """(fuse the denoiser for ONNX Runtime's CPU kernels, quantize it to int8) for a target.
    onnx-openvino stays as exported: OpenVINO cannot load ONNX Runtime's fused operators."""
    fuse = target == "onnx-int8" or (target == "onnx-fp32" and not no_optimize)
    return fuse, target == "onnx-int8"

# ONNX Runtime's Stable Diffusion fusions that have CPU kernels. GroupNorm, SkipGroupNorm,
# BiasSplitGelu, BiasAdd, NhwcConv and packed QKV/KV exist only for GPUs.
CPU_ONLY_OFF = (
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_nhwc_conv",
    "enable_packed_qkv",
    "enable_packed_kv",
    "enable_bias_add",
)


FUSED_OPS = ("Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization", "Gelu", "QuickGelu")


def _patch_num_heads_detection() -> None:
    """onnxruntime 1.32's UNet attention fusion calls int() on a one-element array, which
    recent numpy refuses; read the element instead (same result)."""
    import importlib

    import numpy as np

    def get_num_heads(self, reshape_q, is_torch2=False):
        if is_torch2:
            parent = self.model.get_parent(reshape_q, 1)
            if parent is not None and parent.op_type == "Concat" and len(parent.input) == 4:
                value = self.model.get_constant_value(parent.input[2])
                if isinstance(value, np.ndarray) and value.size == 1:
                    return int(value.reshape(-1)[0])
            return 0
        shape = self.model.get_constant_value(reshape_q.input[1])
        if isinstance(shape, np.ndarray) and list(shape.shape) == [4]:
            return int(shape[2])
        return 0

    # the optimizer imports its modules both as a package and top-level
    for name in ("onnxruntime.transformers.fusion_attention_unet", "fusion_attention_unet"):
        try:
            importlib.import_module(name).FusionAttentionUnet.get_num_heads = get_num_heads
        except ImportError:
            pass


def _patch_simplified_layernorm() -> None:
    """onnxruntime 1.32's RMSNorm (SimplifiedLayerNormalization) fusion indexes a
    NodeProto (`reduce_mean_parent[0]`) when the squares come from Mul(x, x), which
    raises TypeError on Flux's transformer; such nodes are left unfused instead (the
    fused graph is checked against the export either way)."""
    import importlib

    for name in ("onnxruntime.transformers.fusion_simplified_layernorm", "fusion_simplified_layernorm"):
        try:
            cls = importlib.import_module(name).FusionSimplifiedLayerNormalization
        except ImportError:
            continue
        if getattr(cls.fuse, "_anyaccel_patched", False):
            continue
        original = cls.fuse

        def fuse(self, *args, _original=original, **kwargs):
            try:
                return _original(self, *args, **kwargs)
            except TypeError:
                return None

        fuse._anyaccel_patched = True
        cls.fuse = fuse


def _self_attention_to_mha(model) -> int:
    """Rewrites each fused self-attention `Attention` node (packed QKV weights) as
    MatMul -> Split -> MultiHeadAttention. ONNX Runtime's CPU MultiHeadAttention kernel
    computes attention in tiles (flash attention), so the batch x heads x S x S score
    tensor, 1 GiB at 512x512, is never materialised; the QKV MatMul becomes an ordinary
    MatMul that int8 quantization can reach."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    rewritten = 0
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Attention"
            or node.domain != "com.microsoft"
            or node.input[1] not in inits
            or len(node.input) > 3  # a mask or past state: not what the UNet fusion emits
            or set(attrs) != {"num_heads"}  # unequal Q/K/V widths and the like: leave as is
        ):
            nodes.append(node)
            continue
        heads = attrs["num_heads"]
        hidden = inits[node.input[1]].dims[1] // 3
        prefix = f"{node.name}_as_mha"
        split_sizes = numpy_helper.from_array(np.array([hidden] * 3, dtype=np.int64), f"{prefix}_split")
        graph.initializer.append(split_sizes)
        qkv = [f"{prefix}_{n}" for n in ("q", "k", "v")]
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [f"{prefix}_qkv"], name=f"{prefix}_matmul"))
        nodes.append(helper.make_node("Split", [f"{prefix}_qkv", split_sizes.name], qkv, name=f"{prefix}_split", axis=2))
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        nodes.append(
            helper.make_node(
                "MultiHeadAttention", qkv + bias, list(node.output), name=f"{prefix}_mha", domain="com.microsoft", num_heads=heads
            )
        )
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _external_files(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }


def _promote(unet_dir: Path, candidate: Path) -> None:
    """Replaces unet/model.onnx (and its external data) with the candidate graph."""
    import onnx

    target = unet_dir / "model.onnx"
    for name in _external_files(target):
        (unet_dir / name).unlink(missing_ok=True)
    data = "model.onnx_data"
    model = onnx.load(str(candidate), load_external_data=False)
    renamed = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value != data:
                renamed.add(entry.value)
                entry.value = data
    if len(renamed) > 1:
        raise CompileError(f"{candidate}: expected one external data file, found {sorted(renamed)}")
    for name in renamed:
        (unet_dir / name).rename(unet_dir / data)
    onnx.save_model(model, str(target))
    candidate.unlink()


def _denoiser_feeds(path: Path, latent: int = 16):
    """Small random inputs for comparing two graphs of the same UNet or transformer:
    two rows; SD3 takes [2, c, 16, 16] latents, Flux 8x8 packed tokens ([2, 64, 4c])
    with their position ids."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    inputs = {i.name: i for i in session.get_inputs()}
    flux = "img_ids" in inputs
    text = 8 if flux else 77
    side = latent // 2  # Flux: 2x2 patches per token
    feeds = {}
    for name, i in inputs.items():
        if name in ("sample", "hidden_states") and not flux:
            channels = i.shape[1] if isinstance(i.shape[1], int) else 4
            feeds[name] = rng.standard_normal((2, channels, latent, latent), dtype=np.float32)
        elif name == "hidden_states":
            feeds[name] = rng.standard_normal((2, side * side, i.shape[2]), dtype=np.float32)
        elif name == "timestep":
            dtype = np.int64 if "int64" in i.type else np.float32
            feeds[name] = np.full([1] * len(i.shape), 0.999 if flux else 999, dtype=dtype)
        elif name == "encoder_hidden_states":
            feeds[name] = rng.standard_normal((2, text, i.shape[2]), dtype=np.float32)
        elif name in ("text_embeds", "pooled_projections"):
            feeds[name] = rng.standard_normal((2, i.shape[1]), dtype=np.float32)
        elif name == "time_ids":
            feeds[name] = np.zeros((2, i.shape[1]), dtype=np.float32)
        elif name == "guidance":
            feeds[name] = np.full(2, 3.5, dtype=np.float32)
        elif name in ("txt_ids", "img_ids"):
            dtype = np.int64 if "int64" in i.type else np.float32
            if name == "txt_ids":
                feeds[name] = np.zeros((text, 3), dtype=dtype)
            else:
                # diffusers' _prepare_latent_image_ids: (0, row, column) per packed token
                ids = np.zeros((side, side, 3), dtype=dtype)
                ids[..., 1] = np.arange(side)[:, None]
                ids[..., 2] = np.arange(side)[None, :]
                feeds[name] = ids.reshape(-1, 3)
    return session, feeds


def _compare_unet(reference: Path, candidate: Path) -> dict:
    """Runs both denoiser graphs on the same small input: how far the candidate moved."""
    import numpy as np
    import onnxruntime as ort

    ref_session, feeds = _denoiser_feeds(reference)
    want = ref_session.run(None, feeds)[0]
    del ref_session
    got = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    err = np.abs(got.astype(np.float64) - want)
    return {
        "max_abs_error": float(err.max()),
        "relative_rms_error": float(np.sqrt((err**2).mean() / max((want.astype(np.float64) ** 2).mean(), 1e-30))),
    }


def optimize_unet_cpu(unet_dir: Path, validate: bool = True) -> dict:
    """Fuses the denoiser's attention, LayerNorm/SkipLayerNorm and Gelu for ONNX Runtime's
    CPU kernels, in place: a UNet with ONNX Runtime's "unet" fusions, an SD3/Flux
    transformer with its "mmdit" ones (LayerNorm, Gelu, MultiHeadAttention where the
    pattern matches). Portable: the graph keeps standard ops plus com.microsoft contrib
    ops; hardware-specific layouts are still chosen by ONNX Runtime at load."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    _patch_num_heads_detection()
    _patch_simplified_layernorm()
    path = unet_dir / "model.onnx"
    transformer = _is_transformer(onnx.load(str(path), load_external_data=False).graph)
    model_type = "mmdit" if transformer else "unet"
    what = "transformer" if transformer else "UNet"
    log(f"fusing the {what}'s attention and normalisations for ONNX Runtime's CPU kernels ({model_type} fusions)")
    options = FusionOptions(model_type)
    for flag in CPU_ONLY_OFF:
        setattr(options, flag, False)
    optimized = optimize_model(str(path), model_type=model_type, opt_level=0, use_gpu=False, optimization_options=options)
    model = optimized.model
    rewritten = _self_attention_to_mha(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    ops = FUSED_OPS + ("FastGelu", "SimplifiedLayerNormalization")
    fused = {op: sum(n.op_type == op for n in model.graph.node) for op in ops}
    fused = {op: n for op, n in fused.items() if n}
    if not transformer:
        fused["self-attention rewritten to MultiHeadAttention"] = rewritten
    candidate = unet_dir / "fused.onnx"
    onnx.save_model(model, str(candidate), save_as_external_data=True, all_tensors_to_one_file=True, location="fused.onnx_data")
    del model, optimized
    report = {"fused": fused}
    if transformer:
        report["fusions"] = model_type
    if validate:
        report["check"] = _compare_unet(path, candidate)
        if report["check"]["relative_rms_error"] > 1e-4:
            raise CompileError(f"the fused {what} disagrees with the exported one: {report['check']}")
    _promote(unet_dir, candidate)
    log(f"fused {what}: {fused}; {report.get('check', 'not validated')}")
    return report


def quantize_unet_int8(unet_dir: Path, validate: bool = True) -> dict:
    """Quantizes the denoiser's MatMul weights to int8 (activations quantized per call).
    Convolutions stay fp32: ONNX Runtime's integer convolution has no fast CPU kernel.
    A transformer is nearly all MatMuls (its patch embedding is the only convolution,
    SD3's), so int8 reaches almost all of its weights; text encoders and VAE stay fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = unet_dir / "model.onnx"
    candidate = unet_dir / "int8.onnx"
    log(f"quantizing the {unet_dir.name}'s MatMul weights to int8 (dynamic quantization)")
    quantize_dynamic(
        str(path),
        str(candidate),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        per_channel=True,
        # 7-bit weights: CPUs without VNNI (AVX2-only x86) multiply u8 x s8 with a
        # saturating 16-bit add, which on the tiny UNet took the error from 0.004 to
        # 0.058 relative RMS; an artifact is served on whatever CPUs the pool has.
        reduce_range=True,
        use_external_data_format=True,
        # contrib ops (MultiHeadAttention) stop onnx's shape inference; their outputs are fp32
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    report = {"quantized": "MatMul weights, int8 per channel (7-bit range); activations uint8 per call"}
    if validate:
        report["check"] = _compare_unet(path, candidate)
    _promote(unet_dir, candidate)
    log(f"int8 {unet_dir.name}: {report}")
    return report


# ---------------------------------------------------------------------------
# onnx-fp16: ONNX Runtime's CUDA fusions and an fp16 conversion, run on any machine


# ops ONNX Runtime's fp16 conversion leaves fp32 whatever the graph: float16.py's own
# default list (ops without fp16 kernels: Range, CumSum, TopK, ...). ONNX Runtime's SD
# script adds no op types for SD 1.x/2.x/XL; its Flux/SD3 lists are node names of the
# full-size models, which this tool does not copy (see convert_fp16).
FP16_OP_BLOCK_LIST = None
GPU_FUSED_OPS = (
    "Attention", "MultiHeadAttention", "LayerNormalization", "SkipLayerNormalization", "BiasSplitGelu",
    "GroupNorm", "SkipGroupNorm", "NhwcConv", "BiasAdd", "Gelu", "FastGelu", "QuickGelu", "BiasGelu",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
)


def _timestep_sinusoid_nodes(graph) -> list[str]:
    """Nodes from the timestep input to the Sin/Cos of its sinusoidal embedding.
    diffusers computes that embedding in fp32 even in an fp16 pipeline: fp16 spaces
    numbers near 999 by 0.5, so t * frequency in fp16 scrambles the phase."""
    if not any(i.name == "timestep" for i in graph.input):
        return []
    consumers = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    # forward from the timestep, stopping at the sinusoids
    reached, frontier, sinusoids = {}, ["timestep"], []
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            if n.name in reached:
                continue
            reached[n.name] = n
            if n.op_type in ("Sin", "Cos"):
                sinusoids.append(n)
            else:
                frontier.extend(n.output)
    # keep only what feeds a sinusoid (not the other branches the timestep reaches), plus
    # the Constant frequencies: rounded to fp16 they shift the phase at t = 999 by ~0.5
    producers = {o: n for n in graph.node for o in n.output if n.name in reached or n.op_type == "Constant"}
    keep, stack = set(), list(sinusoids)
    while stack:
        n = stack.pop()
        if n.name in keep:
            continue
        keep.add(n.name)
        stack.extend(producers[i] for i in n.input if i in producers)
    return sorted(keep)


def _fp16_component(folder: Path, model_type: str, validate: bool) -> dict:
    """Fuses one component with ONNX Runtime's GPU fusions for its model type, converts
    it to fp16 (inputs and outputs fp16 too: the onnx executor reads each graph's
    declared dtypes and converts), and replaces model.onnx. Fusions run before the
    conversion: they match fp32 patterns only."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    _patch_num_heads_detection()
    _patch_simplified_layernorm()
    path = folder / "model.onnx"
    options = FusionOptions(model_type)
    if model_type == "unet":
        # packed QKV/KV pay off in fp16 only (ONNX Runtime's SD script enables them then)
        options.enable_packed_qkv = options.enable_packed_kv = True
    log(f"{folder.name}: ONNX Runtime's GPU fusions ({model_type}) and fp16 conversion")
    optimized = optimize_model(str(path), model_type=model_type, opt_level=0, use_gpu=True, optimization_options=options)
    fused = {op: sum(n.op_type == op for n in optimized.model.graph.node) for op in GPU_FUSED_OPS}
    fused = {op: n for op, n in fused.items() if n}
    kept_fp32 = {"ops": "float16.py's default block list (ops without fp16 kernels)"}
    node_block = _timestep_sinusoid_nodes(optimized.model.graph)
    keep_io = False
    if node_block:
        # the timestep enters fp32 as well, so 999 and the phases stay exact
        keep_io = ["timestep"]
        kept_fp32["timestep embedding"] = {
            "nodes": len(node_block),
            "why": "sinusoid phases t * frequency lose precision in fp16 (diffusers computes them in fp32 too)",
        }
        kept_fp32["inputs"] = ["timestep"]
    optimized.convert_float_to_float16(keep_io_types=keep_io, op_block_list=FP16_OP_BLOCK_LIST, node_block_list=node_block)
    model = optimized.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    dtypes = {}
    for t in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        dtypes[name] = dtypes.get(name, 0) + 1
    candidate = folder / "fp16.onnx"
    onnx.save_model(model, str(candidate), save_as_external_data=True, all_tensors_to_one_file=True, location="fp16.onnx_data")
    del model, optimized
    report = {
        "fusions": f"onnxruntime {model_type}, use_gpu=True",
        "fused": fused,
        "fp16": "all float tensors, inputs and outputs included, except kept_fp32",
        "kept_fp32": kept_fp32,
        "initializer_dtypes": dtypes,
    }
    if validate:
        report["check"] = _check_fp16(folder.name, path, candidate)
    _promote(folder, candidate)
    log(f"{folder.name} fp16: fused {fused}; {report.get('check', 'not validated')}")
    return report


def _check_fp16(component: str, reference: Path, candidate: Path) -> dict:
    """The fp16 denoiser against the fp32 export, on CUDA where ONNX Runtime has it: the
    GPU fusions (GroupNorm, NhwcConv, BiasSplitGelu, packed attention) have no CPU
    kernels, so on a CPU-only build node the check is recorded as not run."""
    import onnxruntime as ort

    if component not in ("unet", "transformer"):
        return {"ran": False, "reason": "only the denoiser is checked"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"ran": False, "reason": "no CUDA execution provider here; the GPU-fused ops have CUDA kernels only"}
    import numpy as np

    ref, feeds = _denoiser_feeds(reference)
    want = ref.run(None, feeds)[0].astype(np.float64)
    del ref
    session = ort.InferenceSession(str(candidate), providers=["CUDAExecutionProvider"])
    types = {i.name: i.type for i in session.get_inputs()}
    cast = {k: v.astype(np.float16) if types.get(k) == "tensor(float16)" else v for k, v in feeds.items()}
    got = session.run(None, cast)[0].astype(np.float64)
    err = np.abs(got - want)
    report = {
        "provider": "CUDAExecutionProvider",
        "max_abs_error": float(err.max()),
        "relative_rms_error": float(np.sqrt((err**2).mean() / max((want**2).mean(), 1e-30))),
    }
    # fp16 carries about 3 decimal digits; a broken conversion (overflow, NaN) is far off
    if not report["relative_rms_error"] < 2e-2:
        raise CompileError(f"the fp16 {component} disagrees with the fp32 export: {report}")
    return report


def convert_fp16(out: Path, family: str, validate: bool = True) -> dict:
    """onnx-fp16's passes over optimum's fp32 export, per component: the denoiser and the
    CLIP text encoders fused for CUDA and converted to fp16; the VAE and T5 kept fp32."""
    report = {}
    t5 = {"flux": "text_encoder_2", "sd3": "text_encoder_3"}.get(family)
    for component in COMPONENTS:
        folder = out / component
        if not (folder / "model.onnx").is_file():
            continue
        if component.startswith("vae_"):
            # SDXL's VAE overflows in fp16 (NaN, black images); ONNX Runtime's SD script keeps
            # SDXL's decoder fp32. Kept fp32 for every family: it runs once per image, so fp16
            # would save little, and no fp16-safe VAE has to be swapped in.
            report[component] = {"kept_fp32": "whole component", "why": "VAEs overflow in fp16 (SDXL's does); runs once per image"}
        elif component == t5:
            # T5 overflows in fp16; ONNX Runtime's SD script keeps ~30 of the full-size model's
            # nodes fp32 by name, a list tied to that export. Kept fp32 whole instead.
            report[component] = {"kept_fp32": "whole component", "why": "T5 overflows in fp16"}
        elif component in ("unet", "transformer"):
            report[component] = _fp16_component(folder, "unet" if component == "unet" else "mmdit", validate)
        else:
            report[component] = _fp16_component(folder, "clip", validate)
    return report


def export_neuron(
    src: Path,
    out: Path,
    batch_size: int | None,
    size: tuple[int, int] | None,
    tensor_parallel_size: int | None = None,
    sequence_length: int | None = None,
) -> dict:
    """optimum-neuron's compile of the pipeline. UNVERIFIED (no Neuron SDK or device
    here): written against optimum-neuron 0.4.5's NeuronStableDiffusionPipeline,
    NeuronStableDiffusionXLPipeline and NeuronFluxPipeline."""
    family = family_of(src)
    if family == "sd3":
        raise CompileError(
            "--target neuron cannot compile SD3: optimum-neuron (0.4.5, the pinned version) has no "
            "StableDiffusion3 pipeline to load the compiled components (its exporter only registers an "
            "sd3-transformer-2d config); serve SD3 from an onnx-* artifact or the torch sidecar"
        )
    try:
        import optimum.neuron as neuron
    except ImportError as e:
        raise CompileError(
            f"--target neuron needs optimum-neuron and the Neuron SDK ({e}); "
            "install python/requirements-neuron.txt (on an inf2/trn1 or a large CPU instance)"
        ) from e
    cls_name = {"sd": "NeuronStableDiffusionPipeline", "sdxl": "NeuronStableDiffusionXLPipeline", "flux": "NeuronFluxPipeline"}[family]
    cls = getattr(neuron, cls_name, None)
    if cls is None:
        raise CompileError(f"this optimum-neuron ({getattr(neuron, '__version__', '?')}) has no {cls_name}")
    batch = batch_size or 1
    if size is None:
        size = native_size(src, family)
    width, height = size
    shapes = {}
    if family == "flux":
        import torch

        guidance = bool(json.loads((src / "transformer" / "config.json").read_text()).get("guidance_embeds", False))
        # FLUX.1-dev takes 512 T5 tokens; schnell at most 256 (optimum-neuron's docs say so too)
        seq = sequence_length or (512 if guidance else 256)
        # a 12B transformer: optimum-neuron's docs shard it over 8 NeuronCores (inf2.24xlarge, trn1.32xlarge)
        tp = tensor_parallel_size or 8
        log(f"compiling {src} for Neuron: batch {batch}, {width}x{height}, T5 {seq} tokens, bf16, tensor parallel {tp}")
        pipe = cls.from_pretrained(
            str(src),
            export=True,
            torch_dtype=torch.bfloat16,
            tensor_parallel_size=tp,
            batch_size=batch,
            height=height,
            width=width,
            num_images_per_prompt=1,
            sequence_length=seq,
            dynamic_batch_size=False,
            auto_cast="none",
        )
        shapes.update({"tensor_parallel_size": tp, "text_lengths": {"text_encoder": 77, "text_encoder_2": seq}})
    else:
        if tensor_parallel_size not in (None, 1) or sequence_length is not None:
            raise CompileError("--tensor-parallel-size and --sequence-length apply to Flux's neuron compile")
        log(f"compiling {src} for Neuron: batch {batch}, {width}x{height}, matmul auto-cast to bf16")
        pipe = cls.from_pretrained(
            str(src),
            export=True,
            batch_size=batch,
            height=height,
            width=width,
            num_images_per_prompt=1,
            dynamic_batch_size=False,
            auto_cast="matmul",
            auto_cast_type="bf16",
        )
    pipe.save_pretrained(str(out))
    batches = {}
    for component in COMPONENTS:
        cfg = out / component / "config.json"
        if cfg.is_file():
            neuron_cfg = json.loads(cfg.read_text()).get("neuron", {})
            batches[component] = int(neuron_cfg.get("static_batch_size", batch))
    return {
        "kind": "static",
        "batch_size": batch,
        "sizes": [[width, height]],
        # compiled batch per component; at load time optimum-neuron may spread the UNet
        # (or a transformer that is not tensor-parallel) over both NeuronCores of a chip
        # (data parallel), doubling what it accepts
        "component_batches": batches,
        **shapes,
    }


def native_size(src: Path, family: str) -> tuple[int, int]:
    """The model's own image size: the denoiser's sample_size times the VAE's scale
    (FLUX.1's transformer records none: 1024)."""
    vae_cfg = json.loads((src / "vae" / "config.json").read_text())
    scale = 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1)
    cfg = json.loads((src / DENOISERS[family] / "config.json").read_text())
    if family == "flux":
        return 1024, 1024
    native = int(cfg.get("sample_size", 128 if family == "sd3" else 64)) * scale
    return native, native


# ---------------------------------------------------------------------------
# manifest and publishing


def versions(target: str) -> dict:
    names = ["torch", "diffusers", "transformers", "optimum"]
    names += ["optimum-onnx", "onnx", "onnxruntime"] if target.startswith("onnx") else ["optimum-neuron", "neuronx-cc", "torch-neuronx"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def write_manifest(
    out: Path, args, src: Path, revision: str | None, source_hash: dict, shapes: dict, seconds: float, passes=None
) -> dict:
    accelerator, dtype, layout = TARGETS[args.target]
    artifact = tree_hash(out)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "target": args.target,
        "accelerator": accelerator,
        "dtype": dtype,
        "layout": layout,
        # the model family the servers and `deploy` check sizes against
        "family": family_of(src),
        # the denoiser's folder: unet (SD, SDXL) or transformer (SD3, Flux)
        "denoiser": DENOISERS[family_of(src)],
        "pipeline_class": json.loads((src / "model_index.json").read_text()).get("_class_name"),
        "shapes": shapes,
        # graph passes after the export, with how far each moved the denoiser's output
        "passes": passes or {},
        "source": {
            "id": args.model,
            "revision": revision,
            "sha256": source_hash["sha256"],
            "files": len(source_hash["files"]),
            "bytes": source_hash["bytes"],
        },
        "artifact": {"sha256": artifact["sha256"], "bytes": artifact["bytes"], "files": artifact["files"]},
        "tool": {"name": "anyaccel compile", "versions": versions(args.target)},
        "compile_seconds": round(seconds, 1),
        "created_at": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def push(out: Path, repo: str, manifest: dict) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo,
        folder_path=str(out),
        commit_message=f"anyaccel compile --target {manifest['target']} of {manifest['source']['id']}",
    )
    return str(getattr(info, "commit_url", f"https://huggingface.co/{repo}"))


def main(argv=None) -> int:
    args = parse_args(argv)
    out: Path = args.out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.force:
            log(f"error: {out} exists and is not empty; pass --force to replace it")
            return 2
    t0 = time.monotonic()
    try:
        src, revision = resolve_source(args.model, args.revision)
        log(f"hashing the source {src}")
        source_hash = tree_hash(src)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            if args.target == "neuron":
                shapes = export_neuron(
                    src, staging, args.batch_size, args.size, args.tensor_parallel_size, args.sequence_length
                )
            else:
                shapes = export_onnx(src, staging, args.target, validate=not args.no_validate)
            passes = {}
            denoiser = staging / DENOISERS[family_of(src)]
            if args.target != "neuron":
                passes["per_sample_timesteps"] = per_sample_timesteps(denoiser, validate=not args.no_validate)
            fuse, int8 = unet_passes(args.target, args.no_optimize)
            if fuse:
                passes["cpu_fusion"] = optimize_unet_cpu(denoiser, validate=not args.no_validate)
            if int8:
                passes["int8"] = quantize_unet_int8(denoiser, validate=not args.no_validate)
            if args.target == "onnx-fp16":
                passes["fp16"] = convert_fp16(staging, family_of(src), validate=not args.no_validate)
            manifest = write_manifest(
                staging, args, src, revision, source_hash, shapes, time.monotonic() - t0, passes=passes
            )
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    except CompileError as e:
        log(f"error: {e}")
        return 2
    log(f"wrote {out} ({manifest['artifact']['bytes']} bytes, {len(manifest['artifact']['files'])} files) "
        f"in {time.monotonic() - t0:.1f}s; manifest {out / MANIFEST}")
    if args.push:
        log(f"pushing to the Hub repo {args.push}")
        url = push(out, args.push, manifest)
        log(f"pushed: {url}")
    print(json.dumps({"out": str(out), "manifest": str(out / MANIFEST), "artifact_sha256": manifest["artifact"]["sha256"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
