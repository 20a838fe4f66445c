#!/usr/bin/env python3
"""Times the SD components with diffusers (PyTorch, CPU) on a diffusers pipeline folder:
the text encoder (batch 2), one UNet step (batch 2) and the VAE decoder (batch 1), the
same cases as `cargo bench -p anyaccel-executor-onnx --bench components`.

    .venv/bin/python scripts/bench/components_torch.py --model .cache/bench/sd15-random \
        --sizes 256,512 --reps 5 --threads 2 [--bf16] [--json out.json]

fp32 always; with --bf16 each case is also timed under torch.autocast("cpu", bfloat16)
(weights stay fp32, as diffusers users typically run autocast). Prints a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

TOKENS = 77
BOS, EOS = 49406, 49407


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def noise(shape, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    import contextlib

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    t = time.perf_counter()
    te = CLIPTextModel.from_pretrained(args.model / "text_encoder", torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(args.model / "unet", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(args.model / "vae", torch_dtype=torch.float32).eval()
    log(
        f"diffusers components: {args.model} (PyTorch {torch.__version__} CPU, threads={torch.get_num_threads()}, "
        f"reps={args.reps}); loaded in {time.perf_counter() - t:.1f} s"
    )

    ids = torch.full((2, TOKENS), EOS, dtype=torch.long)
    for row, words in enumerate((12, 3)):
        ids[row, 0] = BOS
        for i in range(words):
            ids[row, 1 + i] = 320 + 37 * i + row
    with torch.inference_mode():
        dim = te(ids)[0].shape[-1]
    hidden = noise((2, TOKENS, dim), 1)
    timestep = torch.tensor(999.0)

    def measure(name, fn, mode):
        with torch.inference_mode():
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()
            with ctx:
                fn()  # warm-up
                times = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - t0) * 1e3)
        med = statistics.median(times)
        log(f"  {name:<22} {mode:<5} median {med:9.1f} ms  (min {min(times):.1f}, max {max(times):.1f}, n={len(times)})")
        return {"name": name, "median_ms": med, "times_ms": times}

    cases = [("text_encoder_b2", lambda: te(ids)[0])]
    for size in sizes:
        lat = size // 8
        sample = noise((2, 4, lat, lat), 2)
        latents = noise((1, 4, lat, lat), 3)
        cases.append((f"unet_b2_{size}", lambda s=sample: unet(s, timestep, encoder_hidden_states=hidden).sample))
        cases.append((f"vae_decode_b1_{size}", lambda z=latents: vae.decode(z).sample))

    modes = ["fp32", "bf16"] if args.bf16 else ["fp32"]
    results = {m: [] for m in modes}
    # fp32 and bf16 of one case next to each other, so load drift hits both alike
    for name, fn in cases:
        for m in modes:
            results[m].append(measure(name, fn, m))

    print("| case | " + " | ".join(f"{m} median ms" for m in modes) + " |")
    print("|---|" + "---:|" * len(modes))
    for i, (name, _) in enumerate(cases):
        print(f"| {name} | " + " | ".join(f"{results[m][i]['median_ms']:.1f}" for m in modes) + " |")
    if args.json:
        doc = {
            "engine": f"diffusers {__import__('diffusers').__version__} / PyTorch {torch.__version__} CPU",
            "settings": {"threads": torch.get_num_threads(), "interop_threads": 1, "reps": args.reps},
            "modes": {m: results[m] for m in modes},
        }
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
