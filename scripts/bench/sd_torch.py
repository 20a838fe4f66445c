#!/usr/bin/env python3
"""Times Stable Diffusion with diffusers (PyTorch, CPU) on a diffusers pipeline folder, the
same cases as `cargo bench -p anyaccel-pipeline --bench sd`. The family is read from
model_index.json: SD 1.x/2.x (StableDiffusionPipeline) or SDXL (StableDiffusionXLPipeline:
both text encoders, the UNet with pooled text embeddings and micro-conditioning time_ids).

  components  each text encoder (batch 2), one UNet step (batch 2), VAE decoder (batch 1)
  image       a whole text-to-image generation (Euler, CFG 7.5), one warm-up step first
  flops       FLOPs of each case, counted once by torch's FlopCounterMode (cached in a JSON file)
  ceiling     GFLOP/s of a large GEMM (PyTorch fp32 and bf16, ONNX Runtime fp32): what this
              CPU sustains in practice

    .venv/bin/python scripts/bench/sd_torch.py --model .cache/bench/sd15-random \
        --cases components,image --sizes 256,512 --reps 5 --threads 2 --modes fp32,bf16 \
        [--image 512x20x1] [--json out.json]

bf16 = torch.autocast("cpu", bfloat16) over the fp32 weights, as diffusers users run it on
CPUs. Each mode of a component case runs next to the other, so load drift hits both alike.
Peak memory is the process's peak resident set (ru_maxrss); run one process per mode and
case group when comparing it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path

TOKENS = 77
BOS, EOS = 49406, 49407
PROMPT = "a photograph of an astronaut riding a horse on the moon"
NEGATIVE = "blurry, low quality"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def noise(shape, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def autocast(mode):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


LOADED = {}  # RSS and peak RSS right after the models are loaded (MiB)


def note_loaded():
    rss = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    LOADED.setdefault("rss_after_load_mib", rss)
    LOADED.setdefault("peak_rss_loading_mib", peak_rss_mib())


def measure(name, fn, mode, reps):
    import torch

    with torch.inference_mode(), autocast(mode):
        fn()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    log(f"  {name:<22} {mode:<5} median {med:9.1f} ms  (min {min(times):.1f}, max {max(times):.1f}, n={len(times)})")
    return {"name": name, "median_ms": med, "times_ms": times}


def is_sdxl(model: Path) -> bool:
    index = json.loads((model / "model_index.json").read_text())
    return index.get("_class_name", "").removeprefix("ORT") in (
        "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")


def component_cases(model: Path, sizes, need_vae: bool, meta: bool = False):
    """The component cases as (name, fn). meta: the models are built from their configs
    on the meta device (call inside `with torch.device("meta")`), for counting FLOPs
    without weights or arithmetic."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    sdxl = is_sdxl(model)
    encoders = [("text_encoder", CLIPTextModel)]
    if sdxl:
        encoders.append(("text_encoder_2", CLIPTextModelWithProjection))

    def load(cls, folder):
        if not meta:
            return cls.from_pretrained(model / folder, torch_dtype=torch.float32).eval()
        if cls in (CLIPTextModel, CLIPTextModelWithProjection):
            return cls(CLIPTextConfig.from_pretrained(model / folder)).eval()
        return cls.from_config(cls.load_config(model / folder)).eval()

    rand = (lambda shape, seed: torch.zeros(shape)) if meta else noise  # noqa: E731
    tes = [(name, load(cls, name)) for name, cls in encoders]
    unet = load(UNet2DConditionModel, "unet")
    vae = load(AutoencoderKL, "vae") if need_vae else None
    ids = torch.full((2, TOKENS), EOS, dtype=torch.long)
    for row, words in enumerate((12, 3)):
        ids[row, 0] = BOS
        for i in range(words):
            ids[row, 1 + i] = 320 + 37 * i + row
    cases = []
    dim = pooled = 0
    for name, te in tes:
        # SDXL conditions on the penultimate layer of each, as diffusers asks for it.
        cases.append((f"{name}_b2", lambda te=te: te(ids, output_hidden_states=sdxl)[0]))
        with torch.inference_mode():
            out = te(ids)
        dim += out.last_hidden_state.shape[-1]
        if name == "text_encoder_2":
            pooled = out.text_embeds.shape[-1]
    hidden = rand((2, TOKENS, dim), 1)
    timestep = torch.tensor(999.0)
    for size in sizes:
        lat = size // 8
        sample = rand((2, 4, lat, lat), 2)
        latents = rand((1, 4, lat, lat), 3)
        extra = {}
        if sdxl:
            # pooled bigG embedding and micro-conditioning (original size, crop, target size)
            time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
            extra["added_cond_kwargs"] = {"text_embeds": rand((2, pooled), 4), "time_ids": time_ids}
        cases.append((f"unet_b2_{size}",
                      lambda s=sample, e=extra: unet(s, timestep, encoder_hidden_states=hidden, **e).sample))
        if vae is not None:
            cases.append((f"vae_decode_b1_{size}", lambda z=latents: vae.decode(z).sample))
    return cases


def run_components(args, sizes, modes):
    cases = component_cases(args.model, sizes, need_vae=True)
    note_loaded()
    results = {m: [] for m in modes}
    for name, fn in cases:
        for m in modes:
            results[m].append(measure(name, fn, m, args.reps))
    return results


def run_image(args, modes):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    size, steps, reps = (int(v) for v in args.image.split("x"))
    if is_sdxl(args.model):
        # no invisible watermark: anyaccel adds none
        pipe = StableDiffusionXLPipeline.from_pretrained(
            args.model, torch_dtype=torch.float32, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(
            args.model, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
        )
    # anyaccel defaults SD 1.x to Euler (SDXL ships it); the same scheduler keeps the work identical.
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    note_loaded()

    def generate(n_steps):
        return pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            height=size,
            width=size,
            num_inference_steps=n_steps,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(42),
        ).images[0]

    results = {}
    for mode in modes:
        with torch.inference_mode(), autocast(mode):
            generate(1)  # warm-up
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                generate(steps)
                times.append((time.perf_counter() - t0) * 1e3)
        med = statistics.median(times)
        log(f"  image_{size}_{steps}steps {mode:<5} median {med:9.1f} ms (n={len(times)})")
        results[mode] = [{"name": f"image_{size}_{steps}steps", "median_ms": med, "times_ms": times}]
    return results


def count_flops(args, sizes):
    """FLOPs per case (2 per multiply-add), from torch's own operator counts; cached."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cache = args.model / "flops.json"
    counted = json.loads(cache.read_text()) if cache.is_file() else {}
    encoders = ["text_encoder_b2", "text_encoder_2_b2"] if is_sdxl(args.model) else ["text_encoder_b2"]
    wanted = encoders + [f"{c}_{s}" for s in sizes for c in ("unet_b2", "vae_decode_b1")]
    missing = [w for w in wanted if w not in counted]
    if missing:
        log(f"  counting FLOPs of {missing} (once, on the meta device; cached in {cache})")
        with torch.device("meta"):
            for name, fn in component_cases(args.model, sizes, need_vae=True, meta=True):
                if name in missing:
                    counter = FlopCounterMode(display=False)
                    with torch.inference_mode(), counter:
                        fn()
                    counted[name] = counter.get_total_flops()
        cache.write_text(json.dumps(counted, indent=2))
    return {w: counted[w] for w in wanted}


def gemm_ceiling(threads):
    """GFLOP/s of a 4096^3 GEMM, best of 3: the practical peak of this CPU for dense math,
    in PyTorch (fp32, bf16) and in ONNX Runtime's MLAS (fp32, what anyaccel's CPU path uses)."""
    import numpy as np
    import torch

    n = 4096
    flop = 2 * n**3

    def best(fn):
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return flop / min(times) / 1e9

    out = {}
    for name, dtype in (("torch_fp32", torch.float32), ("torch_bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[name] = best(lambda: torch.mm(a, b))
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
            initializer=[w],
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(
            helper.make_model(graph).SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        x = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        out["onnxruntime_fp32"] = best(lambda: session.run(None, {"x": x}))
    except ImportError:
        pass
    for name, gflops in out.items():
        log(f"  GEMM {n}^3 {name}: {gflops:.0f} GFLOP/s on {threads} threads")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cases", default="components", help="comma list of components, image, flops, ceiling")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--image", default="512x20x1", help="SIZExSTEPSxREPS of the whole-image case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="fp32,bf16", help="fp32 and/or bf16 (autocast)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    modes = [m for m in args.modes.split(",") if m]
    groups = [g for g in args.cases.split(",") if g]
    for m in modes:
        if m not in ("fp32", "bf16"):
            ap.error(f"--modes: unknown mode {m!r}; expected fp32 or bf16")

    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    log(f"diffusers sd bench: {args.model} (PyTorch {torch.__version__} CPU, threads={torch.get_num_threads()}, "
        f"cases={groups}, modes={modes})")
    doc = {
        "engine": f"diffusers {diffusers.__version__} / PyTorch {torch.__version__} CPU",
        "settings": {"threads": torch.get_num_threads(), "interop_threads": 1, "reps": args.reps},
        "modes": {m: [] for m in modes},
    }
    if "components" in groups:
        for m, cases in run_components(args, sizes, modes).items():
            doc["modes"][m] += cases
    if "image" in groups:
        for m, cases in run_image(args, modes).items():
            doc["modes"][m] += cases
    if "flops" in groups:
        doc["flops"] = count_flops(args, sizes)
    if "ceiling" in groups:
        doc["gemm_gflops"] = gemm_ceiling(args.threads)
    doc["peak_rss_mib"] = peak_rss_mib()
    doc.update(LOADED)
    log(f"  peak RSS {doc['peak_rss_mib']:.0f} MiB")

    names = [c["name"] for c in doc["modes"][modes[0]]] if modes else []
    print("| case | " + " | ".join(f"{m} median ms" for m in modes) + " |")
    print("|---|" + "---:|" * len(modes))
    for i, name in enumerate(names):
        print(f"| {name} | " + " | ".join(f"{doc['modes'][m][i]['median_ms']:.1f}" for m in modes) + " |")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
