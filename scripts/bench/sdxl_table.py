#!/usr/bin/env python3
"""Prints scripts/bench/sdxl.sh's results as Markdown: the model, times, ratios against
PyTorch, GFLOP/s, each process's peak memory, then the SDXL goals with the measured value
of each (UNet step <= 0.6 x diffusers bf16's time; peak memory <= diffusers').

    python scripts/bench/sdxl_table.py OUT_DIR VARIANT [VARIANT ...]
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

UNET_GOAL = 0.6  # anyaccel UNet step / diffusers bf16
MEM_GOAL = 1.0  # anyaccel peak RSS / diffusers peak RSS


def load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def fmt(x, spec=".0f"):
    return "–" if x is None else format(x, spec)


def ratio(a, b):
    return None if a is None or b is None else a / b


def med(doc, name, mode=None):
    if doc is None:
        return None
    cases = doc["modes"].get(mode, []) if mode else doc["cases"]
    for c in cases:
        if c["name"] == name:
            return statistics.median(c["times_ms"])
    return None


def main():
    out = Path(sys.argv[1])
    variants = sys.argv[2:]
    sizes = sorted({int(m.group(1)) for p in out.glob("*-components-*.json")
                    if (m := re.search(r"-(\d+)\.json$", p.name))})
    ours = {(v, s): load(out / f"anyaccel-components-{v}-{s}.json") for v in variants for s in sizes}
    theirs = {s: load(out / f"torch-components-{s}.json") for s in sizes}
    ours_image = {v: load(out / f"anyaccel-image-{v}.json") for v in variants}
    torch_i = {m: load(out / f"torch-image-{m}.json") for m in ("fp32", "bf16")}
    meta = load(out / "torch-flops.json") or {}
    export = load(out / "export.json") or {}
    flops = meta.get("flops", {})
    modes = ["fp32", "bf16"]

    first = next((d for d in ours.values() if d), None) or next((d for d in ours_image.values() if d), None)
    if first is None:
        sys.exit(f"sdxl_table: no anyaccel results in {out}")
    layers = export.get("layers", {})
    if layers:
        p = {k: v / 1e6 for k, v in layers.items() if k != "transformer_layers_per_block"}
        print(f"Model: SDXL base architecture, random weights, fp32, UNet transformer_layers_per_block "
              f"{layers['transformer_layers_per_block']}; parameters: UNet {p['unet']:.0f}M, text encoders "
              f"{p['text_encoder']:.0f}M + {p['text_encoder_2']:.0f}M, VAE {p['vae']:.0f}M")
    if export:
        print(f"ONNX export (optimum main_export, text-to-image): peak RSS {export['peak_rss_gib']} GiB, "
              f"{export['seconds']} s")
    s = first["settings"]
    torch_doc = next((d for d in theirs.values() if d), None) or torch_i["fp32"]
    print(f"anyaccel: ONNX Runtime, intra_threads={s['intra_threads']}, inter_threads=1, "
          f"graph optimization={s['optimization']}; "
          f"PyTorch: {torch_doc['engine'] if torch_doc else '–'}, "
          f"threads={torch_doc['settings']['threads'] if torch_doc else '–'}")
    print("Medians in ms; ratio = anyaccel time / PyTorch time (below 1: anyaccel faster).\n")

    def gflops(name, ms):
        if name.startswith("image_"):
            size, steps = name.split("_")[1], int(name.split("_")[2].removesuffix("steps"))
            parts = ["text_encoder_b2", "text_encoder_2_b2", f"vae_decode_b1_{size}"]
            if not all(p in flops for p in parts) or f"unet_b2_{size}" not in flops:
                return None
            f = sum(flops[p] for p in parts) + steps * flops[f"unet_b2_{size}"]
        else:
            f = flops.get(name)
        return None if f is None or ms is None else f / (ms / 1e3) / 1e9

    rows = []  # (name, size)
    for size in sizes:
        doc = next((ours[(v, size)] for v in variants if ours[(v, size)]), None)
        for c in doc["cases"] if doc else []:
            if not any(r[0] == c["name"] for r in rows):
                rows.append((c["name"], size))
    print("| case | GFLOP | " + " | ".join(f"anyaccel {v}" for v in variants) + " | PyTorch fp32 | PyTorch bf16 | "
          + " | ".join(f"{v} / fp32 | {v} / bf16" for v in variants) + " |")
    print("|---|---:|" + "---:|" * (len(variants) + 2 + 2 * len(variants)))
    for name, size in rows:
        a = {v: med(ours[(v, size)], name) for v in variants}
        t = {m: med(theirs[size], name, m) for m in modes}
        cells = [fmt(a[v]) for v in variants] + [fmt(t[m]) for m in modes]
        cells += [fmt(ratio(a[v], t[m]), ".2f") for v in variants for m in modes]
        g = flops.get(name)
        print(f"| {name} | {fmt(g / 1e9 if g else None)} | " + " | ".join(cells) + " |")
    if len(sizes) > 1:
        print("\n(The text encoders run in every component process; their row shows the first size's.)")

    image_names = sorted({c["name"] for d in ours_image.values() if d for c in d["cases"]})
    print("\nWhole image (both text encoders, every UNet step at batch 2, VAE decode), each engine "
          "in its own process:\n")
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

    ref = out / f"image-{variants[0]}.png"
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
                    print(f"\nImage of {v} vs {variants[0]} (same seed): max {d.max():.0f}/255, "
                          f"mean {d.mean():.2f}/255, PSNR {psnr:.1f} dB")
        except ImportError:
            pass

    print("\nAchieved GFLOP/s (FLOPs counted by torch's FlopCounterMode on the meta device, 2 per multiply-add):\n")
    print("| case | " + " | ".join(f"anyaccel {v}" for v in variants) + " | PyTorch fp32 | PyTorch bf16 |")
    print("|---|" + "---:|" * (len(variants) + 2))
    for name, size in rows:
        cells = [fmt(gflops(name, med(ours[(v, size)], name))) for v in variants]
        cells += [fmt(gflops(name, med(theirs[size], name, m))) for m in modes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    ceiling = meta.get("gemm_gflops", {})
    if ceiling:
        print("\nGEMM ceilings of this CPU (4096³, best of 3): "
              + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceiling.items()))

    print("\nPeak resident memory per process (MiB; PyTorch runs fp32 and bf16 in one component process):\n")
    print("| process | " + " | ".join(f"anyaccel {v}" for v in variants) + " | PyTorch |")
    print("|---|" + "---:|" * (len(variants) + 1))
    for size in sizes:
        cells = [fmt(ours[(v, size)]["peak_rss_mib"] if ours[(v, size)] else None) for v in variants]
        cells.append(fmt(theirs[size]["peak_rss_mib"] if theirs[size] else None))
        print(f"| components {size} | " + " | ".join(cells) + " |")
    for name in image_names:
        cells = [fmt(ours_image[v]["peak_rss_mib"] if ours_image.get(v) else None) for v in variants]
        cells.append(" / ".join(f"{m} {fmt(torch_i[m]['peak_rss_mib'] if torch_i[m] else None)}" for m in modes))
        print(f"| {name} | " + " | ".join(cells) + " |")
    loads = [f"{v} {ours[(v, sizes[0])]['rss_after_load_mib']:.0f}" for v in variants if sizes and ours[(v, sizes[0])]]
    if loads:
        print("\nanyaccel RSS after loading (MiB): " + ", ".join(loads))

    def goal(label, value, limit):
        ok = "met" if value is not None and value <= limit else "NOT met"
        print(f"- {label}: {fmt(value, '.2f')} (goal <= {limit}) {ok}")

    for v in variants:
        print(f"\nGoals, on anyaccel {v}:\n")
        for size in sizes:
            name = f"unet_b2_{size}"
            goal(f"UNet step {size}, / PyTorch bf16", ratio(med(ours[(v, size)], name), med(theirs[size], name, "bf16")),
                 UNET_GOAL)
        for size in sizes:
            a, t = ours[(v, size)], theirs[size]
            goal(f"peak memory, components {size}, / PyTorch",
                 ratio(a and a["peak_rss_mib"], t and t["peak_rss_mib"]), MEM_GOAL)
        doc = ours_image.get(v)
        for m in modes:
            if doc and torch_i[m]:
                goal(f"peak memory, whole image, / diffusers {m}",
                     ratio(doc["peak_rss_mib"], torch_i[m]["peak_rss_mib"]), MEM_GOAL)


if __name__ == "__main__":
    main()
