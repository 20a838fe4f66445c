#!/usr/bin/env python3
"""Prints scripts/bench/cpu.sh's results as Markdown: times, ratios against PyTorch,
GFLOP/s and peak memory, then the issue's goals with the measured ratio of each.

    python scripts/bench/cpu_table.py OUT_DIR VARIANT [VARIANT ...]

The first variant is the headline (what `anyaccel compile --target onnx-fp32` serves); the
goals are checked for every variant.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main():
    out = Path(sys.argv[1])
    variants = sys.argv[2:]
    head = variants[0]
    ours = {v: load(out / f"anyaccel-components-{v}.json") for v in variants}
    ours_image = {v: load(out / f"anyaccel-image-{v}.json") for v in variants}
    torch_c = load(out / "torch-components.json")
    torch_i = {m: load(out / f"torch-image-{m}.json") for m in ("fp32", "bf16")}
    meta = load(out / "torch-flops.json") or {}
    flops = meta.get("flops", {})
    modes = ["fp32", "bf16"]

    def med(doc, name, mode=None):
        if doc is None:
            return None
        cases = doc["modes"][mode] if mode else doc["cases"]
        for c in cases:
            if c["name"] == name:
                return statistics.median(c["times_ms"])
        return None

    def fmt(x, spec=".0f"):
        return "–" if x is None else format(x, spec)

    def ratio(a, b):
        return None if a is None or b is None else a / b

    def gflops(name, ms):
        if name.startswith("image_"):
            size, steps = name.split("_")[1], int(name.split("_")[2].removesuffix("steps"))
            parts = ["text_encoder_b2", f"unet_b2_{size}", f"vae_decode_b1_{size}"]
            if not all(p in flops for p in parts):
                return None
            f = flops[parts[0]] + steps * flops[parts[1]] + flops[parts[2]]
        else:
            f = flops.get(name)
        return None if f is None or ms is None else f / (ms / 1e3) / 1e9

    first = next((d for d in ours.values() if d), None)
    if first is None:
        sys.exit(f"cpu_table: no anyaccel results in {out}")
    s = first["settings"]
    print(
        f"anyaccel: ONNX Runtime CPU, intra_threads={s['intra_threads']}, inter_threads=1, "
        f"graph optimization={s['optimization']}, memory arena={s.get('memory_arena')}, "
        f"memory pattern={s.get('memory_pattern')}; "
        f"PyTorch: {torch_c['engine'] if torch_c else '–'}, threads={torch_c['settings']['threads'] if torch_c else '–'}"
    )
    print("Medians in ms; ratio = anyaccel time / PyTorch time (below 1: anyaccel faster).\n")

    names = [c["name"] for c in first["cases"]]
    print("| case | GFLOP | " + " | ".join(f"anyaccel {v}" for v in variants) + " | PyTorch fp32 | PyTorch bf16 | "
          + " | ".join(f"{v} / fp32 | {v} / bf16" for v in variants) + " |")
    print("|---|---:|" + "---:|" * (len(variants) + 2 + 2 * len(variants)))
    for name in names:
        a = {v: med(ours[v], name) for v in variants}
        t = {m: med(torch_c, name, m) for m in modes}
        cells = [fmt(a[v]) for v in variants] + [fmt(t[m]) for m in modes]
        cells += [fmt(ratio(a[v], t[m]), ".2f") for v in variants for m in modes]
        print(f"| {name} | {fmt(flops.get(name, 0) / 1e9 if name in flops else None)} | " + " | ".join(cells) + " |")

    image_names = sorted({c["name"] for d in ours_image.values() if d for c in d["cases"]})
    print("\nWhole image (text encoder, every UNet step at batch 2, VAE decode), each engine in its own process:\n")
    print("| engine | ms | per step ms | / PyTorch fp32 | / PyTorch bf16 | GFLOP/s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in image_names:
        t = {m: med(torch_i[m], name, m) for m in modes}
        for v in variants:
            doc = ours_image.get(v)
            a = med(doc, name)
            if a is None:
                continue
            stages = next(c["stages"] for c in doc["cases"] if c["name"] == name)
            print(f"| anyaccel {v} ({name}) | {fmt(a)} | {fmt(stages['per_step_ms'])} | "
                  f"{fmt(ratio(a, t['fp32']), '.2f')} | {fmt(ratio(a, t['bf16']), '.2f')} | "
                  f"{fmt(gflops(name, a))} | {fmt(doc['peak_rss_mib'])} |")
        for m in modes:
            if t[m] is not None:
                print(f"| diffusers {m} ({name}) | {fmt(t[m])} | – | {fmt(ratio(t[m], t['fp32']), '.2f')} | "
                      f"{fmt(ratio(t[m], t['bf16']), '.2f')} | {fmt(gflops(name, t[m]))} | "
                      f"{fmt(torch_i[m]['peak_rss_mib'])} |")

    # how far each variant's image is from the headline variant's (same seed and prompt)
    ref = out / f"image-{head}.png"
    if ref.is_file():
        try:
            import numpy as np
            from PIL import Image

            a = np.asarray(Image.open(ref), dtype=np.float64)
            for v in variants[1:]:
                other = out / f"image-{v}.png"
                if other.is_file():
                    b = np.asarray(Image.open(other), dtype=np.float64)
                    d = np.abs(a - b)
                    psnr = 10 * np.log10(255**2 / max((d**2).mean(), 1e-12))
                    print(f"\nImage of {v} vs {head} (same seed): max {d.max():.0f}/255, mean {d.mean():.2f}/255, "
                          f"PSNR {psnr:.1f} dB")
        except ImportError:
            pass

    print("\nAchieved GFLOP/s (FLOPs counted by torch's FlopCounterMode, 2 per multiply-add):\n")
    print("| case | " + " | ".join(f"anyaccel {v}" for v in variants) + " | PyTorch fp32 | PyTorch bf16 |")
    print("|---|" + "---:|" * (len(variants) + 2))
    for name in names:
        cells = [fmt(gflops(name, med(ours[v], name))) for v in variants]
        cells += [fmt(gflops(name, med(torch_c, name, m))) for m in modes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ceiling = meta.get("gemm_gflops", {})
    if ceiling:
        print("\nGEMM ceilings of this CPU (4096³, best of 3): "
              + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceiling.items()))

    print("\nPeak resident memory of the component processes (MiB): "
          + ", ".join(f"anyaccel {v} {fmt(ours[v]['peak_rss_mib'] if ours[v] else None)}" for v in variants)
          + f", PyTorch (fp32 and bf16 in one process) {fmt(torch_c['peak_rss_mib'] if torch_c else None)}")

    # the issue's goals, for every variant that ran
    def goal(label, value, limit):
        ok = "met" if value is not None and value <= limit else "NOT met"
        print(f"- {label}: {fmt(value, '.2f')} (goal <= {limit}) {ok}")

    for v in variants:
        if not ours[v]:
            continue
        print(f"\nGoals, on anyaccel {v}:\n")
        for size in (256, 512):
            name = f"unet_b2_{size}"
            goal(f"UNet step {size}, / PyTorch fp32", ratio(med(ours[v], name), med(torch_c, name, "fp32")), 0.7)
            goal(f"UNet step {size}, / PyTorch bf16", ratio(med(ours[v], name), med(torch_c, name, "bf16")), 1.0)
        for name in image_names:
            a = med(ours_image.get(v), name)
            if a is None:
                continue
            goal(f"whole image {name}, / diffusers fp32", ratio(a, med(torch_i["fp32"], name, "fp32")), 0.7)
            if torch_i["fp32"]:
                goal("peak memory, / diffusers fp32", ratio(ours_image[v]["peak_rss_mib"], torch_i["fp32"]["peak_rss_mib"]), 1.0)

if __name__ == "__main__":
    main()
