#!/usr/bin/env python3
"""Builds an SDXL-shaped Stable Diffusion XL pipeline with RANDOM weights for benchmarks.

    .venv/bin/python scripts/bench/make_sdxl_random.py                 # or $PYTHON
    # -> .cache/bench/sdxl-random/       diffusers StableDiffusionXLPipeline (safetensors, fp32)
    # -> .cache/bench/sdxl-random-onnx/  optimum ONNX export (fp32, task text-to-image), as exported
    # -> .cache/bench/sdxl-random-onnx/EXPORT.json   the export's peak RSS, time, parameters, config
    .venv/bin/python scripts/bench/make_sdxl_random.py --layers 1,2,4 --name sdxl-l4-random  # smaller UNet
    .venv/bin/python scripts/bench/make_sdxl_random.py --count          # parameters and FLOPs only

The architecture is SDXL base 1.0's (stabilityai/stable-diffusion-xl-base-1.0 configs,
written out below): UNet2DConditionModel with block_out_channels 320/640/1280,
transformer_layers_per_block 1/2/10, attention_head_dim 5/10/20, cross-attention 2048,
linear projections, `text_time` additional conditioning (256-wide time embedding,
2816 = 1280 pooled + 6 x 256 inputs); CLIPTextModel (CLIP ViT-L/14, 768 wide, 12 layers,
quick_gelu) and CLIPTextModelWithProjection (OpenCLIP ViT-bigG/14, 1280 wide, 32 layers,
gelu, projection 1280), both with the full 49 408-token vocabulary; the SDXL VAE
(kl-f8, 128/256/512/512, scaling_factor 0.13025); EulerDiscreteScheduler.

By default the UNet is SDXL base's in full (transformer_layers_per_block 1,2,10: 2.57 B
parameters, 10.3 GB fp32; the whole pipeline 3.47 B). Its export peaks at ~19.7 GiB RSS
(optimum holds the whole pipeline, traces the UNet, then reloads the exported proto to
write one external-data file), so it needs ~20 GiB free. --layers 1,2,4 (UNet 1.32 B) or
fewer builds the same SDXL-shaped UNet with fewer 1280-wide transformer blocks for smaller
machines: channels, heads, cross-attention width, conditioning, both text encoders and the
VAE stay SDXL's, so each layer still costs what it costs in SDXL. `--count` prints the
parameters and FLOPs of a configuration without building it.

Weights are PyTorch's default initialisation from fixed seeds: images are noise, timing
only. Nothing is downloaded; the tokenizers are derived from fixtures/clip/ (see
fixtures/clip/PROVENANCE.md; tokenizer_2 pads with "!" as SDXL's does). Components are
built and saved one at a time (2 GB shards) so the build never holds more than one of
them. The export runs in a child process; its peak resident set (ru_maxrss) is recorded.
The export is stopped if free memory (MemAvailable) falls under --floor-gib, so a model
that does not fit fails here rather than pushing the machine into the OOM killer; the
peak reached until then is reported. Outputs live under .cache/ (gitignored) and are
never committed. Idempotent: each stage is skipped when its output is already complete.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEED = 2100
FULL_LAYERS = [1, 2, 10]
DEFAULT_LAYERS = FULL_LAYERS

# stable-diffusion-xl-base-1.0/scheduler/scheduler_config.json
SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
# text_encoder/config.json: CLIP ViT-L/14's text tower (SDXL keeps its odd token ids).
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
# text_encoder_2/config.json: OpenCLIP ViT-bigG/14's text tower with its projection.
TEXT_2_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    projection_dim=1280,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
# unet/config.json (diffusers' defaults written out where SDXL relies on them).
UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    only_cross_attention=False,
    block_out_channels=[320, 640, 1280],
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    transformer_layers_per_block=FULL_LAYERS,
    attention_head_dim=[5, 10, 20],
    num_attention_heads=None,
    dual_cross_attention=False,
    use_linear_projection=True,
    class_embed_type=None,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    num_class_embeds=None,
    upcast_attention=None,
    resnet_time_scale_shift="default",
    projection_class_embeddings_input_dim=2816,
    time_embedding_type="positional",
    conv_in_kernel=3,
    conv_out_kernel=3,
)
# vae/config.json of SDXL base (the kl-f8 architecture with SDXL's scaling factor).
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)


def log(*a):
    print("[sdxl-random]", *a, file=sys.stderr, flush=True)


def unet_config(layers):
    return {**UNET_CONFIG, "transformer_layers_per_block": list(layers)}


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def fixtures_module():
    path = REPO / "scripts" / "fixtures" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def build(dst: Path, layers):
    import gc

    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    fx = fixtures_module()
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vocab, merges = fx.derive_clip_vocab(REPO / "fixtures" / "clip" / fx.BPE_NAME)
    assert len(vocab) == 49408
    vf, mf = fx.write_vocab_files(tmp / "_vocab", vocab, merges)
    for folder, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        CLIPTokenizer(str(vf), str(mf), pad_token=pad, model_max_length=77).save_pretrained(str(tmp / folder))
    shutil.rmtree(tmp / "_vocab")

    counts = {}
    # One component at a time: built, saved in 2 GB shards, freed.
    makers = (
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))),
        ("text_encoder_2", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2_CONFIG))),
        ("unet", lambda: UNet2DConditionModel(**unet_config(layers))),
        ("vae", lambda: AutoencoderKL(**VAE_CONFIG)),
    )
    for i, (name, make) in enumerate(makers):
        t = time.time()
        torch.manual_seed(SEED + i)
        model = make().eval()
        counts[name] = params(model)
        model.save_pretrained(str(tmp / name), safe_serialization=True, max_shard_size="2GB")
        log(f"{name}: {counts[name] / 1e6:.1f}M parameters, built and saved in {time.time() - t:.0f}s")
        del model
        gc.collect()
    sched = tmp / "scheduler"
    sched.mkdir()
    (sched / "scheduler_config.json").write_text(
        json.dumps({**SCHEDULER_CONFIG, "_diffusers_version": diffusers.__version__}, indent=2) + "\n"
    )
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (tmp / "PARAMS.json").write_text(json.dumps({"transformer_layers_per_block": list(layers), **counts}, indent=2))
    (tmp / "RANDOM_WEIGHTS.txt").write_text(
        f"SDXL base architecture (transformer_layers_per_block {list(layers)}) with random weights "
        f"(seed {SEED}), made by scripts/bench/make_sdxl_random.py.\nFor benchmarks only: it draws noise.\n"
    )
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def export_child(src: Path, out: Path):
    """Runs in the child process: optimum's exporter over the whole pipeline folder."""
    from optimum.exporters.onnx import main_export

    # Validation would run every component in PyTorch and ONNX Runtime once more (minutes
    # on a small CPU, and a second copy of each model in memory).
    main_export(str(src), output=str(out), task="text-to-image", device="cpu", do_validation=False)


def run_watched(argv, floor_gib: float, what: str):
    """Runs argv as a child; samples its RSS; kills it when MemAvailable < floor_gib.
    Returns (returncode, peak RSS GiB by ru_maxrss, stopped_for_memory, max sampled RSS GiB,
    lowest MemAvailable GiB, RSS timeline)."""
    child = subprocess.Popen(argv, start_new_session=True)
    sampled = 0.0
    stopped = False
    low = float("inf")
    start = time.time()
    timeline = []  # (seconds, RSS GiB) every ~10 s: which phase needs the memory

    def watch():
        nonlocal sampled, stopped, low
        while child.poll() is None:
            now = rss_gib(child.pid)
            sampled = max(sampled, now)
            if not timeline or time.time() - start - timeline[-1][0] >= 10:
                timeline.append((round(time.time() - start), round(now, 2)))
            avail = mem_available_gib()
            low = min(low, avail)
            if avail < floor_gib and not stopped:
                stopped = True
                log(f"{what}: MemAvailable {avail:.1f} GiB < {floor_gib} GiB at child RSS "
                    f"{rss_gib(child.pid):.1f} GiB; stopping it (does not fit)")
                os.killpg(child.pid, signal.SIGKILL)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rc = child.wait()
    watcher.join()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    return rc, peak, stopped, sampled, low, timeline


def export(src: Path, dst: Path, floor_gib: float):
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t = time.time()
    rc, peak, stopped, sampled, low, timeline = run_watched(
        [sys.executable, __file__, "--export-child", str(src), str(tmp)], floor_gib, "export"
    )
    seconds = time.time() - t
    info = {
        "source": str(src),
        "layers": json.loads((src / "PARAMS.json").read_text()),
        "peak_rss_gib": round(max(peak, sampled), 2),
        "min_mem_available_gib": round(low, 2),
        "seconds": round(seconds),
        "returncode": rc,
        "stopped_for_memory": stopped,
        "machine_mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "rss_timeline_s_gib": timeline,
    }
    log(f"export: rc {rc}, peak RSS {info['peak_rss_gib']} GiB, {seconds:.0f}s"
        + (" (stopped: does not fit)" if stopped else ""))
    history = dst.parent / "sdxl-export-attempts.json"
    attempts = json.loads(history.read_text()) if history.is_file() else []
    attempts.append(info)
    history.write_text(json.dumps(attempts, indent=2) + "\n")
    if rc != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"make_sdxl_random: the export failed (rc {rc}, peak RSS {info['peak_rss_gib']} GiB"
                 + (", stopped because it does not fit in memory" if stopped else "") + ")")
    (tmp / "EXPORT.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.copy(src / "PARAMS.json", tmp / "PARAMS.json")
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def count(layers, sizes=(512, 1024)):
    """Parameters and FLOPs (torch's FlopCounterMode, 2 per multiply-add) on the meta
    device: no memory, no arithmetic. UNet at batch 2 (CFG), VAE decode at batch 1."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    out = {"transformer_layers_per_block": list(layers), "params": {}, "flops": {}}
    with torch.device("meta"):
        te = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).eval()
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_2_CONFIG)).eval()
        unet = UNet2DConditionModel(**unet_config(layers)).eval()
        vae = AutoencoderKL(**VAE_CONFIG).eval()
        for name, m in (("text_encoder", te), ("text_encoder_2", te2), ("unet", unet), ("vae", vae)):
            out["params"][name] = params(m)
        out["params"]["vae_decoder"] = params(vae.decoder) + params(vae.post_quant_conv)
        ids = torch.zeros((2, 77), dtype=torch.long)

        def flops(fn):
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), counter:
                fn()
            return counter.get_total_flops()

        out["flops"]["text_encoder_b2"] = flops(lambda: te(ids, output_hidden_states=True))
        out["flops"]["text_encoder_2_b2"] = flops(lambda: te2(ids, output_hidden_states=True))
        for size in sizes:
            lat = size // 8
            cond = {"text_embeds": torch.zeros(2, 1280), "time_ids": torch.zeros(2, 6)}
            out["flops"][f"unet_b2_{size}"] = flops(
                lambda: unet(torch.zeros(2, 4, lat, lat), torch.tensor(999.0),
                             encoder_hidden_states=torch.zeros(2, 77, 2048), added_cond_kwargs=cond)
            )
            out["flops"][f"vae_decode_b1_{size}"] = flops(lambda: vae.decode(torch.zeros(1, 4, lat, lat)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".cache" / "bench", help="parent folder (default .cache/bench)")
    ap.add_argument("--layers", default=",".join(map(str, DEFAULT_LAYERS)),
                    help="UNet transformer_layers_per_block (default SDXL base's 1,2,10)")
    ap.add_argument("--name", default="sdxl-random", help="folder name (default sdxl-random; ONNX: NAME-onnx)")
    ap.add_argument("--floor-gib", type=float, default=2.0,
                    help="stop the export when MemAvailable falls below this (GiB, default 2)")
    ap.add_argument("--no-export", action="store_true", help="build the diffusers pipeline only")
    ap.add_argument("--force", action="store_true", help="rebuild even when the outputs exist")
    ap.add_argument("--count", action="store_true", help="print parameters and FLOPs (meta device) and exit")
    ap.add_argument("--export-child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.export_child:
        export_child(*args.export_child)
        return
    layers = [int(v) for v in args.layers.split(",")]
    if len(layers) != 3:
        ap.error("--layers: three integers, e.g. 1,2,4")
    if args.count:
        print(json.dumps(count(layers), indent=2))
        return
    pipe_dir = args.out / args.name
    onnx_dir = args.out / f"{args.name}-onnx"
    args.out.mkdir(parents=True, exist_ok=True)
    for d in (pipe_dir, onnx_dir):
        built = d / "PARAMS.json"
        if not args.force and built.is_file():
            have = json.loads(built.read_text())["transformer_layers_per_block"]
            if have != layers:
                sys.exit(f"make_sdxl_random: {d} has layers {have}, not {layers}; pass --force or another --name")
    if args.force:
        shutil.rmtree(pipe_dir, ignore_errors=True)
        shutil.rmtree(onnx_dir, ignore_errors=True)
    # outputs are written to *.tmp and renamed when complete, so presence means complete
    if (pipe_dir / "model_index.json").is_file():
        log(f"{pipe_dir} present; skipping the build")
    else:
        t = time.time()
        build(pipe_dir, layers)
        log(f"built {pipe_dir} in {time.time() - t:.0f}s, peak RSS "
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    if args.no_export:
        print(pipe_dir)
        return
    if (onnx_dir / "unet" / "model.onnx").is_file():
        log(f"{onnx_dir} present; skipping the export")
    else:
        export(pipe_dir, onnx_dir, args.floor_gib)
    print(onnx_dir)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
