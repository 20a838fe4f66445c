#!/usr/bin/env python3
"""Writes the diffusers-format (PyTorch safetensors) twin of an ONNX fixture model.

The remote executor's tests run the sidecar on CPU torch, which loads diffusers
components, while the committed fixture models are ONNX exports. This script rebuilds
the SAME random-weight model with the fixture script's own model-building code
(scripts/fixtures/make_fixtures.py seeds torch before building each component), saves
it with `save_pretrained`, and checks each component against the committed ONNX file
on the same inputs, so the two formats are known to hold the same weights.

    .venv/bin/python python/scripts/make_diffusers_fixture.py \
        --model tiny-sd15 --out fixtures/models/tiny-sd15-diffusers
    .venv/bin/python python/scripts/make_diffusers_fixture.py --model tiny-sdxl

scripts/fixtures/make_fixtures.py writes the same folders for tiny-sd15 and tiny-sdxl
(byte-identical) as part of a full fixture rebuild; this script rebuilds one of them
alone and checks it.

Deterministic: the same package versions give byte-identical safetensors files.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# largest |torch - onnxruntime| accepted per component on the check inputs
ATOL = 1e-4


def load_fixture_script():
    path = REPO / "scripts" / "fixtures" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def build(model: str, out: Path) -> None:
    fx = load_fixture_script()
    if model not in fx.MODELS and model not in fx.SDXL_MODELS:
        raise SystemExit(f"unknown model {model!r}; the fixture script builds {sorted(fx.MODELS) + sorted(fx.SDXL_MODELS)}")
    with tempfile.TemporaryDirectory(prefix="anyaccel-fixture-") as work:
        if model in fx.SDXL_MODELS:
            spec = fx.SDXL_MODELS[model]
            tok = fx.tiny_tokenizer(REPO / "fixtures", Path(work), spec["pad_token"], model)
            tok2 = fx.tiny_tokenizer(REPO / "fixtures", Path(work), spec["pad_token_2"], model + "-2")
            pipe = fx.build_sdxl_pipeline(model, spec, tok, tok2)
        else:
            spec = fx.MODELS[model]
            tok = fx.tiny_tokenizer(REPO / "fixtures", Path(work), spec["pad_token"], model)
            pipe = fx.build_pipeline(model, spec, tok)
        if out.exists():
            shutil.rmtree(out)
        # relative save path, as the fixture script does, keeps configs free of temp paths
        pipe.save_pretrained(str(out), safe_serialization=True)
    del pipe


def check(model: str, out: Path) -> dict:
    """Runs every component in torch (from `out`) and in onnxruntime (the committed
    ONNX export) on the same inputs; returns the max abs difference per component."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    if (out / "text_encoder_2").exists():
        return check_sdxl(model, out)

    onnx_dir = REPO / "fixtures" / "models" / model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1

    def sess(component):
        return ort.InferenceSession(str(onnx_dir / component / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 77), generator=g)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    te = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    diffs = {}
    with torch.no_grad():
        hidden = te(ids)[0]
        ref = sess("text_encoder").run(["last_hidden_state"], {"input_ids": ids.numpy()})[0]
        diffs["text_encoder"] = float(np.abs(hidden.numpy() - ref).max())
        t = 401.0
        eps = unet(sample, torch.tensor(t), encoder_hidden_states=hidden).sample
        ref = sess("unet").run(None, {
            "sample": sample.numpy(),
            "timestep": np.array(t, dtype=np.float32),
            "encoder_hidden_states": hidden.numpy(),
        })[0]
        diffs["unet"] = float(np.abs(eps.numpy() - ref).max())
        dec = vae.decode(latents).sample
        ref = sess("vae_decoder").run(None, {"latent_sample": latents.numpy()})[0]
        diffs["vae_decoder"] = float(np.abs(dec.numpy() - ref).max())
        params = vae.encode(image).latent_dist.parameters
        ref = sess("vae_encoder").run(None, {"sample": image.numpy()})[0]
        diffs["vae_encoder"] = float(np.abs(params.numpy() - ref).max())
    return diffs


def check_sdxl(model: str, out: Path) -> dict:
    """check() for an SDXL folder: both text encoders (penultimate hidden states and
    the pooled text_embeds), the UNet with its text_time conditioning, and the VAE."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    onnx_dir = REPO / "fixtures" / "models" / model
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1

    def sess(component):
        return ort.InferenceSession(str(onnx_dir / component / "model.onnx"), opts, providers=["CPUExecutionProvider"])

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (2, 77), generator=g)
    sample = torch.randn(2, 4, 8, 12, generator=g)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    te = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    te2 = CLIPTextModelWithProjection.from_pretrained(out / "text_encoder_2").eval()
    unet = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    diffs = {}
    with torch.no_grad():
        o1 = te(ids, output_hidden_states=True)
        n1 = f"hidden_states.{te.config.num_hidden_layers - 1}"
        ref = sess("text_encoder").run([n1, "last_hidden_state"], {"input_ids": ids.numpy()})
        diffs["text_encoder"] = float(max(np.abs(o1.hidden_states[-2].numpy() - ref[0]).max(), np.abs(o1.last_hidden_state.numpy() - ref[1]).max()))
        o2 = te2(ids, output_hidden_states=True)
        n2 = f"hidden_states.{te2.config.num_hidden_layers - 1}"
        ref = sess("text_encoder_2").run([n2, "text_embeds"], {"input_ids": ids.numpy()})
        diffs["text_encoder_2"] = float(max(np.abs(o2.hidden_states[-2].numpy() - ref[0]).max(), np.abs(o2.text_embeds.numpy() - ref[1]).max()))
        hidden = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], dim=-1)
        pooled = o2.text_embeds
        time_ids = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0], [128.0, 96.0, 8.0, 16.0, 72.0, 64.0]])
        t = 401.0
        eps = unet(sample, torch.tensor(t), encoder_hidden_states=hidden, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        ref = sess("unet").run(None, {
            "sample": sample.numpy(),
            "timestep": np.array(t, dtype=np.float32),
            "encoder_hidden_states": hidden.numpy(),
            "text_embeds": pooled.numpy(),
            "time_ids": time_ids.numpy(),
        })[0]
        diffs["unet"] = float(np.abs(eps.numpy() - ref).max())
        dec = vae.decode(latents).sample
        ref = sess("vae_decoder").run(None, {"latent_sample": latents.numpy()})[0]
        diffs["vae_decoder"] = float(np.abs(dec.numpy() - ref).max())
        params = vae.encode(image).latent_dist.parameters
        ref = sess("vae_encoder").run(None, {"sample": image.numpy()})[0]
        diffs["vae_encoder"] = float(np.abs(params.numpy() - ref).max())
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-sd15", help="fixture model name (tiny-sd15, tiny-sd2v or tiny-sdxl)")
    ap.add_argument("--out", type=Path, help="output folder (default: fixtures/models/<model>-diffusers)")
    ap.add_argument("--check-only", action="store_true", help="only compare an existing folder with the ONNX export")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    out = (args.out or REPO / "fixtures" / "models" / f"{args.model}-diffusers").resolve()
    if not args.check_only:
        build(args.model, out)
    diffs = check(args.model, out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps({"model": args.model, "out": str(out), "bytes": size, "max_abs_diff_vs_onnx": diffs}, indent=2))
    bad = {k: v for k, v in diffs.items() if not v <= ATOL}
    if bad:
        print(f"components differ from the ONNX export by more than {ATOL}: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
