"""Random-weight diffusers models for the GPU check, built from configs (nothing is
downloaded). SD 1.5- and SDXL-sized models reuse scripts/bench's builders (the real
architectures, CLIP's full vocabulary derived from fixtures/clip); the tiny SD 2.x
model is built from the configs of the tiny-sd2v fixture, which has no diffusers
folder.

    python -m gpu_check.models sd2-tiny|sd15|sdxl OUT_DIR
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = 1600


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_sd2_tiny(dst: Path) -> dict:
    """SD 2.x (v-prediction, linear projections, per-block head dims) at the tiny
    fixture's size, random weights (seeded), from fixtures/models/tiny-sd2v's configs."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    src = REPO / "fixtures" / "models" / "tiny-sd2v"
    cfg = lambda sub: json.loads((src / sub / "config.json").read_text())  # noqa: E731
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg("text_encoder").items()
                                                    if not k.startswith("_") and k != "architectures"})).eval()
    torch.manual_seed(SEED + 1)
    unet = UNet2DConditionModel.from_config(cfg("unet")).eval()
    torch.manual_seed(SEED + 2)
    vae = AutoencoderKL.from_config(cfg("vae_decoder")).eval()
    scheduler = EulerDiscreteScheduler.from_config(json.loads((src / "scheduler" / "scheduler_config.json").read_text()))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(str(src / "tokenizer")),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "RANDOM_WEIGHTS.txt").write_text(
        f"tiny SD 2.x (v-prediction) from fixtures/models/tiny-sd2v's configs, random weights (seed {SEED}), "
        "made by python/gpu_check/models.py. It draws noise.\n")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return {"family": "sd", "prediction_type": scheduler.config.prediction_type}


def build_sd15(dst: Path) -> dict:
    _load(REPO / "scripts" / "bench" / "make_sd15_random.py", "make_sd15_random").build(dst)
    return {"family": "sd", "architecture": "SD 1.5 (UNet 860M, CLIP-L 123M, kl-f8 VAE 84M)"}


def build_sdxl(dst: Path) -> dict:
    mod = _load(REPO / "scripts" / "bench" / "make_sdxl_random.py", "make_sdxl_random")
    mod.build(dst, (1, 2, 10))
    return {"family": "sdxl", "architecture": "SDXL base (UNet 2.6B, CLIP-L, OpenCLIP-bigG, VAE)"}


BUILDERS = {"sd2-tiny": build_sd2_tiny, "sd15": build_sd15, "sdxl": build_sdxl}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in BUILDERS:
        print(f"usage: python -m gpu_check.models {'|'.join(BUILDERS)} OUT_DIR", file=sys.stderr)
        return 2
    t = time.time()
    info = BUILDERS[argv[0]](Path(argv[1]))
    info["seconds"] = round(time.time() - t, 2)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
