"""The PyTorch side of the GPU check, one process per job so that its memory, its
CUDA context and torch.compile's caches are its own.

    python -m gpu_check.torch_worker refs  SPEC.json OUT.json
    python -m gpu_check.torch_worker bench SPEC.json OUT.json

refs: diffusers' reference images for the accuracy check. The denoiser and text
encoders run in the spec's dtype (fp16 on CUDA), the VAE decodes in fp32, as
anyaccel's onnx-fp16 artifact does; initial noise from a CPU torch.Generator per
image (what anyaccel reproduces); Euler; images rounded as diffusers' postprocess.

bench: diffusers timings on one model: eager (the default SDPA attention
processors) and, when asked, torch.compile of the UNet. Warm-ups run first; if
the spec names a go_file, the timed runs wait for it, so that compilation can
overlap other work while the timings themselves run on a quiet machine.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path


def log(msg: str) -> None:
    print(f"[torch-worker] {msg}", file=sys.stderr, flush=True)


def _torch_setup(spec):
    import torch

    device = spec.get("device", "cpu")
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[spec.get("dtype", "fp32")]
    if device == "cpu" and spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    return torch, device, dtype


def _load(path, dtype, device):
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler

    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _sync(torch, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _kwargs(pipe, case, torch, n=1, seed=None):
    w, h = case["size"]
    seed = case.get("seed", 0) if seed is None else seed
    gens = [torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]
    kw = dict(prompt=case["prompt"], num_inference_steps=case["steps"], guidance_scale=case["guidance"],
              width=w, height=h, num_images_per_prompt=n, generator=gens if n > 1 else gens[0])
    if case.get("negative_prompt") is not None:
        kw["negative_prompt"] = case["negative_prompt"]
    return kw


def refs(spec: dict) -> dict:
    import numpy as np
    from PIL import Image

    torch, device, dtype = _torch_setup(spec)
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for case in spec["cases"]:
        name = case["name"]
        try:
            t = time.time()
            pipe = _load(case["model"], dtype, device)
            vae = pipe.vae.to(torch.float32)
            with torch.inference_mode():
                latents = pipe(**_kwargs(pipe, case, torch), output_type="latent").images
                nan_latents = bool(torch.isnan(latents).any())
                x = vae.decode(latents.to(torch.float32) / vae.config.scaling_factor).sample
            img = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
            arr = (img * 255).round().astype(np.uint8)[0]
            path = out_dir / f"{name}.png"
            Image.fromarray(arr).save(path)
            results[name] = {"ok": True, "png": str(path), "nan_latents": nan_latents,
                             "seconds": round(time.time() - t, 3)}
            del pipe, vae
        except Exception as e:  # noqa: BLE001 - reported per case
            traceback.print_exc()
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"device": device, "dtype": spec.get("dtype"), "vae_dtype": "fp32",
            "torch": torch.__version__, "cases": results}


def _time(torch, device, fn, reps):
    times = []
    for _ in range(reps):
        _sync(torch, device)
        t = time.perf_counter()
        fn()
        _sync(torch, device)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "runs_s": [round(x, 4) for x in times]}


def _wait_for(go_file: str, timeout_s: float) -> float:
    t = time.time()
    while not os.path.exists(go_file):
        if time.time() - t > timeout_s:
            raise TimeoutError(f"no go signal ({go_file}) within {timeout_s:.0f}s")
        time.sleep(0.2)
    return time.time() - t


def bench(spec: dict) -> dict:
    torch, device, dtype = _torch_setup(spec)
    import diffusers

    report = {"device": device, "dtype": spec.get("dtype"), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "cases": {}}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    t = time.time()
    pipe = _load(spec["model"], dtype, device)
    report["load_s"] = round(time.time() - t, 2)
    report["attention_processors"] = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    if spec.get("channels_last"):
        pipe.unet.to(memory_format=torch.channels_last)
    eager_unet = pipe.unet
    base = spec["case"]
    reps = int(spec.get("reps", 3))
    cases = {"b1": dict(base)}
    for n in spec.get("batches", []):
        cases[f"b{n}"] = dict(base, n=n)
    if spec.get("turbo"):
        cases["turbo"] = dict(base, steps=1, guidance=0.0)

    def run(case, steps=None):
        kw = _kwargs(pipe, case, torch, n=case.get("n", 1))
        if steps is not None:
            kw["num_inference_steps"] = steps
        with torch.inference_mode():
            pipe(**kw, output_type="np")

    # warm-ups (eager): a short run per shape, so the timed runs meet no first-call cost
    t = time.time()
    for case in cases.values():
        run(case, steps=min(2, case["steps"]))
    report["eager_warmup_s"] = round(time.time() - t, 2)

    compiled = None
    comp = spec.get("compile")
    if comp:
        t = time.time()
        try:
            kw = {"fullgraph": True}
            if comp.get("backend"):
                kw["backend"] = comp["backend"]
            if comp.get("mode"):
                kw["mode"] = comp["mode"]
            compiled = torch.compile(eager_unet, **kw)
            pipe.unet = compiled
            # the first calls compile (and, with reduce-overhead, record CUDA graphs)
            for _ in range(int(comp.get("warmup_runs", 2))):
                run(cases["b1"])
            report["compile"] = {**kw, "compile_and_warmup_s": round(time.time() - t, 2)}
        except Exception as e:  # noqa: BLE001 - torch.compile's failure is a result
            traceback.print_exc()
            report["compile"] = {**kw, "error": f"{type(e).__name__}: {e}"}
            compiled = None
        pipe.unet = eager_unet

    if spec.get("go_file"):
        report["waited_for_go_s"] = round(_wait_for(spec["go_file"], float(spec.get("go_timeout_s", 900))), 2)

    for name, case in cases.items():
        n = case.get("n", 1)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        r = _time(torch, device, lambda c=case: run(c), reps if name in ("b1", "turbo") else 1)
        r["images"] = n
        r["images_per_s"] = n / r["median_s"]
        r["steps"] = case["steps"]
        r["guidance"] = case["guidance"]
        if device.startswith("cuda"):
            r["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated()
            r["max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved()
        report["cases"][f"eager_{name}"] = r
        log(f"eager {name}: {r['median_s']:.4f}s")
    if compiled is not None:
        pipe.unet = compiled
        r = _time(torch, device, lambda: run(cases["b1"]), reps)
        r.update(images=1, images_per_s=1 / r["median_s"], steps=base["steps"], guidance=base["guidance"])
        report["cases"]["compiled_b1"] = r
        log(f"compiled b1: {r['median_s']:.4f}s")
        pipe.unet = eager_unet
    return report


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("refs", "bench"):
        print(__doc__, file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    out = {"refs": refs, "bench": bench}[argv[0]](spec)
    Path(argv[2]).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
