#!/usr/bin/env python3
"""Builds an SD 1.5-sized Stable Diffusion pipeline with RANDOM weights for benchmarks.

    .venv/bin/python scripts/bench/make_sd15_random.py            # or $PYTHON
    # -> .cache/bench/sd15-random/       diffusers pipeline (safetensors, fp32)
    # -> .cache/bench/sd15-random-onnx/  optimum ONNX export (fp32), as exported
    # -> .cache/bench/sd15-random-onnx-cpu/   + the CPU fusions `anyaccel compile --target onnx-fp32` applies
    # -> .cache/bench/sd15-random-onnx-int8/  + int8 MatMul weights (`--target onnx-int8`)
    # The variants link every component but the UNet to sd15-random-onnx/.

The architecture is SD 1.5's (runwayml/stable-diffusion-v1-5 configs): UNet2DConditionModel
(320/640/1280/1280, cross-attention 768, ~860M parameters), CLIPTextModel (768 wide,
12 layers, quick_gelu, the full 49 408-token CLIP vocabulary) and the kl-f8 AutoencoderKL
(128/256/512/512). Weights are PyTorch's default initialisation from fixed seeds, so the
images are noise, but every matmul and convolution has the real shape: this is for timing
only. Nothing is downloaded; the tokenizer is derived from fixtures/clip/ (see
fixtures/clip/PROVENANCE.md). The outputs live under .cache/ (gitignored, ~8 GB) and are
never committed. Idempotent: each stage is skipped when its output is already complete.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = 1500

SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# CLIP ViT-L/14 text tower as SD 1.5 ships it (text_encoder/config.json).
TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=768,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# UNet2DConditionModel's defaults are SD 1.x's apart from these two.
UNET_CONFIG = dict(sample_size=64, cross_attention_dim=768)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)


def log(*a):
    print("[sd15-random]", *a, file=sys.stderr, flush=True)


def fixtures_module():
    path = REPO / "scripts" / "fixtures" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(dst: Path):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    fx = fixtures_module()
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vocab, merges = fx.derive_clip_vocab(REPO / "fixtures" / "clip" / fx.BPE_NAME)
    assert len(vocab) == 49408
    vf, mf = fx.write_vocab_files(tmp / "_vocab", vocab, merges)
    tokenizer = CLIPTokenizer(str(vf), str(mf), pad_token="<|endoftext|>", model_max_length=77)

    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    torch.manual_seed(SEED + 2)
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    log(f"parameters: text encoder {n(text_encoder):.0f}M, unet {n(unet):.0f}M, vae {n(vae):.0f}M")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(tmp / "_vocab")
    (tmp / "RANDOM_WEIGHTS.txt").write_text(
        f"SD 1.5 architecture with random weights (seed {SEED}), made by scripts/bench/make_sd15_random.py.\n"
        "For benchmarks only: it draws noise.\n"
    )
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def export(src: Path, dst: Path):
    from optimum.exporters.onnx import main_export

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Validation would run every component in PyTorch and ONNX Runtime once more (minutes
    # on a small CPU); the tiny fixtures already check the exporter's numerics.
    main_export(str(src), output=str(tmp), task="text-to-image", device="cpu", do_validation=False)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def compile_passes():
    """`anyaccel compile`'s graph passes, from python/anyaccel_sidecar/compile.py."""
    path = REPO / "python" / "anyaccel_sidecar" / "compile.py"
    spec = importlib.util.spec_from_file_location("anyaccel_compile", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variant(base: Path, dst: Path, int8: bool):
    """The base export with compile's CPU passes applied to a copy of the UNet."""
    passes = compile_passes()
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in base.iterdir():
        if item.name != "unet":
            (tmp / item.name).symlink_to(Path("..") / base.name / item.name)
    shutil.copytree(base / "unet", tmp / "unet")
    report = {"cpu_fusion": passes.optimize_unet_cpu(tmp / "unet")}
    if int8:
        report["int8"] = passes.quantize_unet_int8(tmp / "unet")
    (tmp / "PASSES.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "bench", help="parent folder (default .cache/bench)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the outputs exist")
    args = ap.parse_args()
    pipe_dir = args.out / "sd15-random"
    onnx_dir = args.out / "sd15-random-onnx"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.force:
        shutil.rmtree(pipe_dir, ignore_errors=True)
        shutil.rmtree(onnx_dir, ignore_errors=True)
    # outputs are written to *.tmp and renamed when complete, so presence means complete
    if (pipe_dir / "model_index.json").is_file():
        log(f"{pipe_dir} present; skipping the build")
    else:
        t = time.time()
        build(pipe_dir)
        log(f"built {pipe_dir} in {time.time() - t:.0f}s")
    if (onnx_dir / "unet" / "model.onnx").is_file():
        log(f"{onnx_dir} present; skipping the export")
    else:
        t = time.time()
        export(pipe_dir, onnx_dir)
        log(f"exported {onnx_dir} in {time.time() - t:.0f}s")
    for suffix, int8 in (("cpu", False), ("int8", True)):
        dst = args.out / f"sd15-random-onnx-{suffix}"
        if args.force:
            shutil.rmtree(dst, ignore_errors=True)
        if (dst / "unet" / "model.onnx").is_file():
            log(f"{dst} present; skipping")
        else:
            t = time.time()
            variant(onnx_dir, dst, int8)
            log(f"made {dst} in {time.time() - t:.0f}s")
    print(onnx_dir)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
